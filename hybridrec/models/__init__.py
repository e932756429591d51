"""The signals, each fitted per fold on that fold's history: ALS factors (``cf``), co-occurrence
and transitions (``cooc``), text vectors (``embedding``), blocked nearest neighbours and id
indexes; and the words: topics of the served item vectors (``topics``) and users' interests in
them (``interests``). May import ``config``, ``constants``, ``store`` and ``udfs``."""
