"""Local fusions and matchers of the passes, as onnxscript rewrite rules.

Each module holds one pattern, written the way ``onnxscript.rewriter`` rules are: a
``pattern(op, …)`` written as dataflow, a ``check(context, …)`` that returns
``MatchResult().fail(reason)`` on a mismatch, and (for rewrites) a ``rewrite(op, …)`` that builds
the replacement; nothing is kept on ``self`` between them.

- :mod:`.norm_div`: ``Mul(x, Reciprocal(Sqrt(v)))`` → ``Div(x, Sqrt(v))`` (``NormDivPass``);
- :mod:`.runtime_qdq`: a run-time-scaled ``QuantizeLinear → DequantizeLinear`` pair →
  ``Div, Round, Clip, Mul`` (``TrtActivationQdqPass``);
- :mod:`.rotation`: the online rotation ``Reshape → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape``, one
  pattern with two lowerings (ONNX Runtime's ``KroneckerRotation``, TensorRT's ``kron_hadamard``);
- :mod:`.int4_matmul`: ``MatMul(x, DequantizeLinear(q, scale))`` with a blocked INT4 weight
  (a matcher: both INT4 lowerings repack the weight themselves);
- :mod:`.act_qdq`: the per-token INT8 activation QDQ in front of a TensorRT GEMM (a matcher);
- :mod:`.rms_norm`: the exporter's decomposed RMSNorm (a matcher: the model map and the fp16
  conversion read it, nothing rewrites it).

:mod:`._apply` runs a rule at one node and keeps the ``MatchResult``, so a pass can report every
candidate it leaves alone by name, with the rule's reason.
"""
