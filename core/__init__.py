"""smoothrot.core: the bottom layer every package may import.

Errors, the model-directory manifest (``ModelDims``), the INT4 and Hadamard arithmetic, the QDQ
reference semantics, pass results and the TensorRT import shim. It imports no other smoothrot
package.
"""
