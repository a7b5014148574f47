"""Delete step 5, disconnect_volumes: every volume of the instance is disconnected.

nova detaches a volume's encryptor before it disconnects the volume; with
qemu's native LUKS the decryption lives inside the guest's QEMU, which is
gone by now, so nothing is left to detach on the host but the volume's
libvirt secret, which ``undefine_secrets`` removes once no file or
connection can still need it. Each connector's ``disconnect`` tolerates a
volume already disconnected. Revert does nothing.
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.convert import volume_spec
from spawnflow.flows.teardown.base import TeardownStep
from spawnflow.virt.volumes import VolumeConnector


class DisconnectVolumesStep(TeardownStep):
    step = "disconnect_volumes"
    default_provides = "disconnect_volumes"

    def execute(self) -> dict[str, Any]:
        removals = self.removals()
        for owner in self.ctx.owners:
            for volume in owner.spec.volumes:
                connector = VolumeConnector.load(volume.driver)

                def disconnect(
                    volume: Any = volume, connector: VolumeConnector = connector
                ) -> bool:
                    connector.disconnect(volume_spec(volume), None)
                    return True  # disconnected (or it already was: said the same way)

                removals.attempt(
                    f"volume {volume.id} (build {owner.build_id}) disconnected", disconnect
                )
        return removals.result()
