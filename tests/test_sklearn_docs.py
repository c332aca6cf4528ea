"""The example of docs/embedding.md runs and does what it says."""
import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "embedding.md"


def test_embedding_example_runs():
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = blocks[-1]
    assert "class TinyLogReg" in example, "the complete example is the last python block"
    namespace = {"__name__": "embedding_example"}
    exec(compile(example, str(DOC), "exec"), namespace)   # asserts inside the example
    assert namespace["accuracy"] > 0.95
