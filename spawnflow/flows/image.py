"""Step 2, image: the _base cache entry, the instance directory and the root disk.

Creates the instance directory and the root disk (a qcow2 overlay on the
cached base, or a raw copy) grown to the flavor's root_gb. Each is marked with
the build id that made it, before it exists: the directory by ``MARKER``
inside it, written before the directory appears under its name
(:func:`~spawnflow.virt.marked_dir.make_marked_dir`), the disk by
``DISK_MARKER`` next to it (needed when the directory was there before the
build). The shared base is never removed.

Revert reads the markers, never the recorded result: it removes the instance
directory if this build made it, otherwise only the disk if this build made
it, otherwise nothing. So it works without a result (a crash lost it), and
reverting an old build again never deletes the directory or disk of a later
build of the same instance (same uuid, same paths), which a result saying
``created_disk`` would have.

The fetch and every ``qemu-img`` end within a fraction of a second when the
agent stops (``AgentStopping``: the step stays RUNNING and re-runs on the
next start) or the build is cancelled (``BuildCancelled``: it rolls back);
the half-written ``.part`` or ``disk.tmp`` is removed on the way out.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from spawnflow.exceptions import (
    AgentStopping,
    BuildCancelled,
    HostCallInterrupted,
    ImageFetchInterrupted,
    ImageUnreachable,
)
from spawnflow.flows.base import SpawnTask
from spawnflow.persistence.step_results import ImageResult
from spawnflow.virt import instance_files
from spawnflow.virt.image_sources import is_masked
from spawnflow.virt.images import FetchResult, group_id
from spawnflow.virt.instance_files import DISK_MARKER, MARKER, read_marker, write_marker
from spawnflow.virt.marked_dir import make_marked_dir

LOG = logging.getLogger(__name__)
GiB = 1024**3


class ImageStep(SpawnTask):
    step = "image"
    default_provides = "image"

    def execute(self) -> ImageResult:
        try:
            return self._make()
        except (ImageFetchInterrupted, HostCallInterrupted):
            # Which interruption decides the outcome: SIGTERM leaves the step to
            # be re-run by the next agent (RUNNING); a cancel rolls the build back.
            if self.ctx.stopping():
                raise AgentStopping(
                    f"agent stopping while build {self.ctx.build_id} makes its root disk"
                ) from None
            raise BuildCancelled("cancelled by operator while making the root disk") from None

    def _must_stop(self) -> bool:
        """Whether the fetch or a qemu-img must end now: the agent stops (a flag in
        memory, asked first) or the build was cancelled (read from the log, which
        may fail for a moment: that is not a cancel, and is asked again shortly)."""
        if self.ctx.stopping():
            return True
        try:
            return self.ctx.cancelled()
        except Exception:
            LOG.debug("build %s: cannot read whether it was cancelled", self.ctx.build_id)
            return False

    def _make(self) -> ImageResult:
        ctx, image = self.ctx, self.ctx.spec.image
        base = self._fetch()
        ctx.guard()  # a fetch may take long: still ours before the instance files?
        instance_dir = ctx.instance_dir
        # Root only, plus the group libvirt runs guests as when it exists
        # (what the image cache uses): other users never read a guest's disk.
        # Made with its marker in one step, so never there unmarked.
        gid = group_id(ctx.conf.images.cache_group)
        made = make_marked_dir(instance_dir, MARKER, ctx.build_id, gid)
        created_dir = made or instance_files.made_by(instance_dir) == ctx.build_id
        disk_path = os.path.join(instance_dir, "disk")
        disk_marker = os.path.join(instance_dir, DISK_MARKER)
        if not os.path.exists(disk_path):
            # Claimed before it exists: a crash right after creating it still
            # leaves a disk that a re-run adopts and a revert removes.
            write_marker(disk_marker, ctx.build_id)
        size = ctx.spec.flavor.root_gb * GiB or None
        ctx.images.create_instance_disk(
            base.path, disk_path, image.disk_format, size, should_stop=self._must_stop
        )
        # Ours if this run or an earlier run of this build (cut short) made it.
        created_disk = read_marker(disk_marker) == ctx.build_id
        return ImageResult(
            instance_dir=instance_dir,
            created_dir=created_dir,
            disk_path=disk_path,
            disk_format=image.disk_format,
            created_disk=created_disk or created_dir,
            base_path=base.path,
            console_log=os.path.join(instance_dir, "console.log"),
        )

    def revert(self, result: Any = None, **kwargs: Any) -> None:
        # The markers, not the result, tell what this build made (see the
        # module docstring): a result may be missing (failure, crash
        # mid-step) or stale (a later build of this instance owns the paths).
        instance_files.remove(self.ctx.instance_dir, self.ctx.build_id)

    def _fetch(self) -> FetchResult:
        """The base image's cache entry (by content digest), fetched if need be."""
        ctx, image = self.ctx, self.ctx.spec.image
        if is_masked(image.source):
            # A recovered build has only the persisted (redacted) spec: the
            # URL's token is gone. The entry may still be cached by checksum.
            found = (
                ctx.images.lookup(
                    image.sha256, image.disk_format, image.label, should_stop=self._must_stop
                )
                if image.sha256
                else None
            )
            if found is None:
                raise ImageUnreachable(
                    f"image source {image.source!r}: the URL's query, fragment or "
                    "credentials were not persisted (they may hold a token), so the image "
                    "cannot be fetched after a restart and is not cached by checksum; "
                    "start the build again"
                )
            return found
        return ctx.images.fetch(
            image.source,
            image.sha256,
            image.disk_format,
            label=image.label,
            should_stop=self._must_stop,
        )
