"""The TensorRT target: the TensorRT-form graph, engine builds with two profiles, plugin checks
(``smoothrot doctor``)."""
