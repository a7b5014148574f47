"""[recovery] options: what an agent start does with builds it finds unfinished."""

from oslo_config import cfg

GROUP = "recovery"

OPTS = [
    cfg.StrOpt("policy", default="auto", choices=["resume", "rollback", "auto"],
               help="resume: continue from the interrupted step; rollback: revert every "
                    "step; auto: resume builds younger than resume_window, else roll back."),
    cfg.IntOpt("resume_window", default=600, min=0,
               help="Seconds; with policy=auto, older interrupted builds are rolled back."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)
