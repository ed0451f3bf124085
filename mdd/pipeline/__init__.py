"""The layer that reads the whole config and hands each stage its part.

- ``experiment``: ``mdd-run`` (one run, alone or as rank 0 under torchrun);
- ``plan``: the stages a config runs and the cache key of each;
- ``execute``: the run itself, one stage call after another;
- ``follow``: the ranks after 0 of a torchrun run;
- ``standalone``: the base model and the judge alone (``mdd pretrain``, ``mdd consistency``,
  ``mdd judge``).

Outside ``mdd.config``, ``mdd.cli`` and this package no function takes the whole ``Config``
(``tests/test_config_layering.py``): a stage gets its section and its inputs.
"""
