"""Step 4, encryptor: a libvirt secret per encrypted volume (qemu native LUKS).

Creates one private volume secret holding the passphrase read from the
volume's key file; the passphrase never leaves this step (the result holds
secret uuids only). The usage id names the instance, the volume and this
build, so a re-run adopts the secret this build made, and revert undefines
only this build's secrets, found by usage id, with or without a recorded
result (a later build of the same instance has its own).
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.base import SpawnTask
from spawnflow.virt import secrets


class EncryptorStep(SpawnTask):
    step = "encryptor"
    default_provides = "volume_secrets"

    def execute(self, volumes: list[dict[str, Any]]) -> dict[str, str]:
        found = {}
        for volume in self.ctx.spec.volumes:
            if volume.encryption is None:
                continue
            usage = secrets.usage_id(self.ctx.instance_uuid, volume.id, self.ctx.build_id)
            # Read beneath [encryption] key_dir again: the spec check may be
            # long past (a queued or recovered build) and the file replaced.
            key = secrets.read_key_file(
                volume.encryption.key_file, self.ctx.conf.encryption.key_dir
            )
            if secrets.find(self.ctx.host, usage) is None:
                uuid = secrets.define(
                    self.ctx.host,
                    usage,
                    key,
                    description=f"spawnflow volume passphrase: instance {self.ctx.instance_uuid}"
                    f" volume {volume.id} build {self.ctx.build_id}",
                )
            else:  # this build's own, from a run cut short: converge its value
                uuid = secrets.set_value(self.ctx.host, usage, key)
            found[volume.id] = uuid
        return found

    def revert(self, *args: Any, **kwargs: Any) -> None:
        if not any(v.encryption for v in self.ctx.spec.volumes):
            return
        for volume in self.ctx.spec.volumes:
            if volume.encryption is not None:
                secrets.undefine(
                    self.ctx.host,
                    secrets.usage_id(self.ctx.instance_uuid, volume.id, self.ctx.build_id),
                )
