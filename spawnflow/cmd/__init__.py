"""The ``spawnflow`` command line (cliff): spawn, agent, build, event, history, db.

Commands call the public library only (``spawnflow.Agent``, ``spawnflow.history``,
``spawnflow.engine.admin``); what they print is made in ``render``.
"""
