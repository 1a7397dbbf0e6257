"""kercr's console scripts, one module each, on one CLI layer (:mod:`kercr.cli.common`).

==================  =================================================
``kercr-models``    :func:`kercr.cli.models.models_main`
``kercr-train``     :func:`kercr.cli.train.train_main`
``kercr-prepare``   :func:`kercr.cli.train.prepare_main`
``kercr-detect``    :func:`kercr.cli.detect.detect_main`
``kercr-evaluate``  :func:`kercr.cli.detect.evaluate_main`
``kercr-export``    :func:`kercr.cli.export.main`
``kercr-tune``      :func:`kercr.cli.tune.main`
==================  =================================================

Each module imports only the standard library, :mod:`kercr.cli.common` and :mod:`kercr.config`
at the top, so ``--help`` never loads TensorFlow or Keras; the work's imports come after parsing.
``-v``/``-q`` mean the same in every command (default: progress lines; ``-q``: warnings and
errors only; ``-v``: debug details and tracebacks).
"""
