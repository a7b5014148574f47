"""TaskFlow's ``test_retries``, unchanged, on the event log: serial and parallel (threads).

The tests in ``RETRIES_STAGED`` set states through ``Storage`` that no engine
sets (to stage a crash); they run with those states forced as overrides.
Not run: ``ParallelEngineWithEventletTest`` (see ``base.py``).
"""

from taskflow.tests.unit import test_retries as tf

from tests.taskflow_suites.base import RETRIES_STAGED, OnEventLog, SharedPool


class SerialRetriesOnEventLog(OnEventLog, tf.SerialEngineTest):
    STAGED = RETRIES_STAGED


class ParallelRetriesOnEventLog(OnEventLog, SharedPool, tf.ParallelEngineWithThreadsTest):
    STAGED = RETRIES_STAGED
