"""[recovery] options: what an agent start does with builds it finds unfinished."""

from oslo_config import cfg

GROUP = "recovery"

OPTS = [
    cfg.StrOpt(
        "policy",
        default="auto",
        choices=["resume", "rollback", "auto"],
        help="resume: continue from the interrupted step; rollback: revert every "
        "step; auto: resume builds younger than resume_window, else roll back.",
    ),
    cfg.IntOpt(
        "resume_window",
        default=600,
        min=0,
        help="Seconds; with policy=auto, older interrupted builds are rolled back.",
    ),
    cfg.StrOpt(
        "on_flow_change",
        default="rollback",
        choices=["rollback", "hold"],
        help="What an agent start does with an interrupted build whose flow "
        "version (a digest of the spawn flow's step names, order and step "
        "versions, recorded when the build was queued) differs from the "
        "running code's (a build queued before flow versions were recorded "
        "ran the flow of those releases). Such a build is never resumed. rollback: revert "
        "it at once (a revert accepts results stored by an older flow). "
        "hold: leave it INTERRUPTED, with the reason recorded once, untouched "
        "by later agent starts until an operator acts (spawnflow build "
        "rollback BUILD, or a cancel).",
    ),
    cfg.IntOpt(
        "lease_seconds",
        default=30,
        min=3,
        help="An agent renews its ownership of the host every lease_seconds/3; a "
        "second agent refuses to start while the owner's lease is fresh and "
        "its process alive.",
    ),
    cfg.IntOpt(
        "graceful_stop_timeout",
        default=30,
        min=0,
        help="Seconds a stop (SIGTERM) gives a step inside a call that cannot be "
        "interrupted (a libvirt call) before it warns about it. Interruptible "
        "calls (image fetch, qemu-img, event waits, wait for boot) give way at "
        "once. Either way the agent exits only after every build thread has "
        "ended; its builds are left INTERRUPTED for the next start.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
