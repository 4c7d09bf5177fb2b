"""Artifacts made elsewhere: each failed check is one line; and the `fedsim inspect` report."""

import json

import pytest
from guide_artifact import build_guide_tflite

from fedsim.artifact import ArtifactError, check_artifact, inspect
from fedsim.core.task import Task

TOY_TASK = Task((28, 28), "image", 10)


def check(artifact, toy, task=TOY_TASK):
    check_artifact(artifact, task, toy.x_train[:32], toy.y_train[:32])


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_a_guide_made_artifact_passes_every_check(toy):
    check(build_guide_tflite(), toy)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(signatures=("train", "infer", "save")), "missing signature(s) restore"),
        (dict(restore_assigns=False), "restore does not bring back"),
        (dict(lr=0.0), "one train step changes no weight"),
        (dict(nan_loss=True), "non-finite loss"),
        (dict(input_shape=(32, 32)), "x takes samples of shape (32, 32), but the data's are (28, 28)"),
        (dict(classes=5), "one-hot rows of 5 classes, but the data has 10"),
    ],
)
def test_each_broken_artifact_is_refused_with_one_line(options, message, toy):
    with pytest.raises(ArtifactError) as e:
        check(build_guide_tflite(**options), toy)
    assert message in one_line(e)


def test_bytes_that_are_no_tflite_are_refused(toy):
    with pytest.raises(ArtifactError) as e:
        check(b"not a flatbuffer at all", toy)
    assert "the interpreter cannot load it" in one_line(e)


def test_the_inspect_report_of_the_seed_artifact(artifact, toy):
    report = inspect(artifact, batch=(toy.x_train, toy.y_train), repeats=3)
    # The seed MLP: 784*128 + 128 + 128*10 + 10 float32 weights.
    assert report.parameters == 101_770 and report.checkpoint_bytes > 4 * 101_770
    assert report.task == TOY_TASK.to_dict()
    train_inputs = {d["name"]: d for d in report.signatures["train"]["inputs"]}
    assert train_inputs["x"] == {"name": "x", "shape": [-1, 28, 28], "dtype": "uint8"}
    assert train_inputs["y"] == {"name": "y", "shape": [-1], "dtype": "int32"}
    assert report.flex_ops("save") == ["FlexSave"] and report.flex_ops("restore") == ["FlexRestore"]
    assert report.flex_ops("infer") == []  # inference needs no Select TF op
    assert set(report.latency_ms) == {"train", "infer", "save", "restore"}
    assert all(v > 0 for v in report.latency_ms.values())
    table = report.table()
    assert list(table["signature"]) == ["train", "infer", "save", "restore"]
    assert "Select TF ops" in str(report) and "FlexRestore" in str(report)
    json.dumps(report.to_dict())  # artifact.json is plain JSON


def test_parity_the_artifact_learns_what_the_tensorflow_model_learns(artifact, toy):
    from fedsim.model.builders import ArtifactRecipe

    report = inspect(artifact, batch=(toy.x_train, toy.y_train), repeats=1, parity=4, recipe=ArtifactRecipe())
    p = report.parity
    assert list(p["step"]) == [1, 2, 3, 4]
    assert (p["loss_diff"] < 1e-4).all() and (p["max_weight_diff"] < 1e-5).all()
    assert p["loss_tflite"].iloc[-1] < p["loss_tflite"].iloc[0]  # it really trained


def _with_attribute_order(artifact: bytes, reverse: bool) -> bytes:
    """The artifact with every Select TF op's NodeDef attributes written in (reverse) key order."""
    import flatbuffers
    from flatbuffers import flexbuffers
    from tensorflow.core.framework import node_def_pb2
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(artifact, 0)
    reordered = 0
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex].customCode
            if not (code and code.startswith(b"Flex")):
                continue
            name, node = flexbuffers.GetRoot(bytes(op.customOptions)).AsVector
            parsed = node_def_pb2.NodeDef.FromString(
                bytes(flexbuffers.String(node._Indirect(), node._byte_width).Bytes)
            )
            if len(parsed.attr) < 2:
                continue
            head = node_def_pb2.NodeDef()
            head.CopyFrom(parsed)
            head.ClearField("attr")
            raw = head.SerializeToString()  # then one attribute at a time, in the order asked for
            for key in sorted(parsed.attr, reverse=reverse):
                one = node_def_pb2.NodeDef()
                one.attr[key].CopyFrom(parsed.attr[key])
                raw += one.SerializeToString()
            assert node_def_pb2.NodeDef.FromString(raw) == parsed
            op.customOptions = list(flexbuffers.Dumps([name.AsString, raw]))
            reordered += 1
    assert reordered, "the seed artifact has Select TF ops with several attributes"
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_identity_is_the_same_for_every_attribute_order_of_a_select_op(artifact):
    """The converter writes a Select TF op's NodeDef attributes in protobuf map order, which differs
    between processes; the identity that keys the latency cache must not."""
    from fedsim.artifact.checks import identity

    forward, backward = _with_attribute_order(artifact, False), _with_attribute_order(artifact, True)
    assert forward != backward
    assert identity(forward) == identity(backward) == identity(artifact)
    assert len(identity(artifact)) == 64
