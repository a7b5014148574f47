"""TaskFlow's ``test_engines``, unchanged, on the event log: serial and parallel (threads).

Not run: ``ParallelEngineWithEventletTest`` and ``WorkerBasedEngineTest``
(why: ``tests/taskflow_suites/base.py`` and the architecture page).
"""

from taskflow.tests.unit import test_engines as tf

from tests.taskflow_suites.base import OnEventLog, SharedPool


class SerialEngineOnEventLog(OnEventLog, tf.SerialEngineTest):
    pass


class ParallelEngineOnEventLog(OnEventLog, SharedPool, tf.ParallelEngineWithThreadsTest):
    pass
