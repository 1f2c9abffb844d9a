"""The INT8 model under test: where it comes from, how it is built or loaded, saved, and
loaded again in a fresh process.

- :mod:`.routes`: the routes table, one handler per route (scheme, hook, fixture,
  checkpoint directory, GGUF file), and :func:`.routes.int8_side`, the INT8 model side;
- :mod:`.build`: quantizing a private copy of the reference, checked (``build_int8``);
- :mod:`.checkpoint`: ``--llmq-int8-model`` (``checkpoint_origin``, ``load_int8_checkpoint``);
- :mod:`.gguf_q8_0`: a Q8_0 GGUF as ``weight-only-int8`` layers, losslessly;
- :mod:`.third_party`: models made by other libraries (torchao, bitsandbytes, quanto,
  GPTQ/AWQ, compressed-tensors): what they are, how they save and reload, why not.
"""
