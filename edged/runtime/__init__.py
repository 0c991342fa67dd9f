"""The runtime layer: TFLite interpreters, delegates and preprocessing.

Knows nothing of ZeroMQ or of the repository's swap logic: it loads one version
directory into a :class:`~edged.runtime.model.LoadedModel` and runs tensors through it.
"""
