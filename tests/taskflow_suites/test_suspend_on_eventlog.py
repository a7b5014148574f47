"""TaskFlow's ``test_suspend``, unchanged, on the event log: serial and parallel (threads).

Not run: ``ParallelEngineWithEventletTest`` (see ``base.py``).
"""

from taskflow.tests.unit import test_suspend as tf

from tests.taskflow_suites.base import OnEventLog, SharedPool


class SerialSuspendOnEventLog(OnEventLog, tf.SerialEngineTest):
    pass


class ParallelSuspendOnEventLog(OnEventLog, SharedPool, tf.ParallelEngineWithThreadsTest):
    pass
