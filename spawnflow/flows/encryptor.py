"""Step 4, encryptor: a libvirt secret per encrypted volume (qemu native LUKS).

Creates one private volume secret holding the passphrase read from the
volume's key file; the passphrase never leaves this step (the result holds
secret uuids only). Revert undefines the secrets of this instance's volumes,
found by usage id, so it works without a recorded result.
"""

from __future__ import annotations

from typing import Any

from taskflow import task

from spawnflow.flows.context import BuildContext
from spawnflow.virt import secrets


class AttachEncryptorsTask(task.Task):
    step = "encryptor"
    default_provides = "volume_secrets"

    def __init__(self, ctx: BuildContext):
        super().__init__(name=self.step)
        self.ctx = ctx

    def execute(self, volumes: list[dict[str, Any]]) -> dict[str, str]:
        found = {}
        for volume in self.ctx.spec.volumes:
            if volume.encryption is None:
                continue
            usage = secrets.usage_id(self.ctx.instance_uuid, volume.id)
            uuid = secrets.find(self.ctx.host, usage)
            if uuid is None:
                key = secrets.read_key_file(volume.encryption.key_file)
                uuid = secrets.define(self.ctx.host, usage, key)
            found[volume.id] = uuid
        return found

    def revert(self, *args: Any, **kwargs: Any) -> None:
        if not any(v.encryption for v in self.ctx.spec.volumes):
            return
        for volume in self.ctx.spec.volumes:
            if volume.encryption is not None:
                secrets.undefine(self.ctx.host, secrets.usage_id(self.ctx.instance_uuid, volume.id))
