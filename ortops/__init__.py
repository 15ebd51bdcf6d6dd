"""ONNX Runtime custom ops (C++) used by smoothrot's ORT lowering: see ``smoothrot.ortops.library``.

Nothing is re-exported here, so that ``python -m smoothrot.ortops.library`` imports the module
once.
"""
