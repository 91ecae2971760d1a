"""The student as a deployable ONNX folder, parity-checked, and measured beside the PyTorch student.

    graph.py     PyTorch -> model.onnx (encoder classifier; causal LM with its KV cache); int8 quantisation
    runtime.py   onnxruntime behind kdistill's model contracts (label logits; greedy generation)
    folder.py    what an export folder holds; load_export
    parity.py    the check against the PyTorch student that an export must pass to be written
    student.py   export_student: the stages in order, written atomically
    measure.py   quality and cost of each form, with the card's one cost harness

onnx, onnxruntime and onnxscript come with kdistill's `export` extra (`pip install "kdistill[export]"`).
"""

from kdistill.export.folder import FORMATS, is_export, load_export
from kdistill.export.measure import measure_export
from kdistill.export.parity import Thresholds
from kdistill.export.student import export_student

__all__ = ["FORMATS", "Thresholds", "export_student", "is_export", "load_export", "measure_export"]
