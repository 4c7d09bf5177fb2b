"""TensorFlow 2.18's own tf.lite.Interpreter, loaded without the TensorFlow Python package.

A host only drives interpreters: it never builds a graph or converts a model. Importing TensorFlow
for its `tf.lite.Interpreter` costs ~3 s and ~0.3 GB per process (thousands of Python modules, Keras
among them), most of a cold start's host stage. This loads the same parts by hand: TensorFlow's
native libraries (whose kernels the Flex delegate runs: the train/save/restore signatures' Select
TF ops), the interpreter's pybind wrapper, and TensorFlow's own interpreter.py, executed the way the
tflite_runtime wheel executes its copy of that file (no metrics, no tf_export). The native code and
the Python code are the very files `import tensorflow` would use, so every signature computes the
same bits; only the package's __init__ is skipped.

`interpreter_class()` returns this class, or tf.lite.Interpreter where TensorFlow is already
imported, where the files are not where TensorFlow 2.18 puts them, or where FEDSIM_TFLITE_LOADER=
tensorflow asks for the package (for comparison, or a TensorFlow laid out otherwise).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

# the wrapper registers under its real name, so a later `import tensorflow` in the same process finds
# it in sys.modules instead of initialising the pybind module a second time
_WRAPPER = "tensorflow.lite.python.interpreter_wrapper._pywrap_tensorflow_interpreter_wrapper"
_RUNTIME = "fedsim_tflite_runtime"  # the stand-in for the tflite_runtime package interpreter.py imports from
_loaded: type | None = None


class _NoMetrics:
    """interpreter.py counts interpreter creations for TensorFlow's telemetry: nothing to count here."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _tensorflow_dir() -> Path | None:
    spec = importlib.util.find_spec("tensorflow")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _load_light() -> type:
    root = _tensorflow_dir()
    if root is None:
        raise ImportError("TensorFlow is not installed")
    framework = root / "libtensorflow_framework.so.2"
    internal = root / "python" / "_pywrap_tensorflow_internal.so"
    wrapper = root / "lite" / "python" / "interpreter_wrapper" / "_pywrap_tensorflow_interpreter_wrapper.so"
    source = root / "lite" / "python" / "interpreter.py"
    missing = [p.name for p in (framework, internal, wrapper, source) if not p.exists()]
    if missing:
        raise ImportError(f"TensorFlow's files are not where 2.18 puts them: {', '.join(missing)}")
    text = source.read_text()
    if text.count("from tflite_runtime import") != 2:
        raise ImportError("TensorFlow's interpreter.py is not the 2.18 file this loader knows")
    # RTLD_GLOBAL: the interpreter finds the Flex delegate (TF_AcquireFlexDelegate) and TensorFlow's
    # kernels among the process's global symbols, as it does after `import tensorflow`
    ctypes.CDLL(str(framework), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(internal), mode=ctypes.RTLD_GLOBAL)
    module = sys.modules.get(_WRAPPER)
    if module is None:
        loader = importlib.machinery.ExtensionFileLoader(_WRAPPER, str(wrapper))
        spec = importlib.util.spec_from_loader(_WRAPPER, loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        sys.modules[_WRAPPER] = module
    runtime = types.ModuleType(_RUNTIME)
    runtime.__path__ = []  # a package, so `from fedsim_tflite_runtime import x` resolves attributes
    metrics = types.ModuleType(f"{_RUNTIME}.metrics_portable")
    metrics.TFLiteMetrics = _NoMetrics  # type: ignore[attr-defined]
    runtime._pywrap_tensorflow_interpreter_wrapper = module  # type: ignore[attr-defined]
    runtime.metrics_portable = metrics  # type: ignore[attr-defined]
    sys.modules[_RUNTIME] = runtime
    sys.modules[metrics.__name__] = metrics
    interpreter = types.ModuleType(f"{_RUNTIME}.interpreter")
    # interpreter.py takes its tflite_runtime branch when its file sits in a tflite_runtime folder
    interpreter.__file__ = str(Path("tflite_runtime") / "interpreter.py")
    exec(
        compile(text.replace("from tflite_runtime import", f"from {_RUNTIME} import"), str(source), "exec"),
        interpreter.__dict__,
    )
    sys.modules[interpreter.__name__] = interpreter
    return interpreter.Interpreter


def interpreter_class() -> type:
    """tf.lite.Interpreter's class: TensorFlow's own where the package is imported or asked for,
    else the same class loaded without the package (see the module's docstring)."""
    global _loaded
    if "tensorflow" in sys.modules or os.environ.get("FEDSIM_TFLITE_LOADER") == "tensorflow":
        import tensorflow as tf

        return tf.lite.Interpreter
    if _loaded is None:
        try:
            _loaded = _load_light()
        except (ImportError, OSError, SyntaxError):  # (once: every later interpreter is TensorFlow's)
            import tensorflow as tf

            _loaded = tf.lite.Interpreter
    return _loaded


def schema() -> types.ModuleType:
    """TensorFlow's generated reader of the .tflite flatbuffer schema (pure Python), by path where the
    TensorFlow package is not imported: reading an artifact's ops needs no TensorFlow."""
    name = "tensorflow.lite.python.schema_py_generated"
    if name in sys.modules:
        return sys.modules[name]
    root = None if "tensorflow" in sys.modules else _tensorflow_dir()
    path = root / "lite" / "python" / "schema_py_generated.py" if root is not None else None
    if path is None or not path.exists():
        from tensorflow.lite.python import schema_py_generated

        return schema_py_generated
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
