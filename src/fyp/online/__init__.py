"""Learning while serving: the parts that turn served feeds and the engagements that follow into
training signal, and the state that learns from it.

* :mod:`fyp.online.embedding_table`: collisionless, expirable ID embeddings with per-row optimizer
  state and incremental (delta) snapshots;
* :mod:`fyp.online.joiner`: impressions joined with the engagements that follow into labelled
  examples, exactly once;
* :mod:`fyp.online.bus`: the at-least-once queue between the joiner and the trainer (in process,
  or Redis Streams consumer groups).
"""
