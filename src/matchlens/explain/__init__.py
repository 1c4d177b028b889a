"""Evidence products: the recipes the CLI and API call to train a verifier from a source and to
explain an indexed result or a whole search (:mod:`matchlens.explain.workflows`), and the HTML
page of ``matchlens search --explain`` (:mod:`matchlens.explain.page`).

This layer sits above ``evaluate`` (it uses the report's HTML) and ``index``/``rerank``; the
evidence itself (verifier, maps, spatial-verification evidence) is :mod:`matchlens.evidence`.
"""
