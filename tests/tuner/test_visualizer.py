"""ModelVisualizer: the spec's tree format, model order, glyphs, and the layer table."""

from torch import nn

from panther.tuner import ModelVisualizer


class TransformerLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 1)
        self.fc = nn.Linear(4, 4)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer0 = TransformerLayer()
        self.layer1 = TransformerLayer()


class MyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()


EXPECTED = """\
model (MyModel)/
└─ encoder (Encoder)/
    ├─ layer0 (TransformerLayer)/
    │   ├─ attention (MultiheadAttention)/
    │   │   └─ out_proj (NonDynamicallyQuantizableLinear)/
    │   └─ fc (Linear)/
    └─ layer1 (TransformerLayer)/
        ├─ attention (MultiheadAttention)/
        │   └─ out_proj (NonDynamicallyQuantizableLinear)/
        └─ fc (Linear)/"""


def test_tree_matches_spec_format(capsys):
    text = ModelVisualizer.print_module_tree(MyModel())
    assert text == EXPECTED
    assert capsys.readouterr().out == EXPECTED + "\n"


def test_root_name_and_leaf_model():
    assert ModelVisualizer.module_tree(nn.Linear(2, 2), root_name="net") == "net (Linear)/"


def test_children_in_model_order_not_string_order():
    lines = ModelVisualizer.module_tree(nn.Sequential(*[nn.ReLU() for _ in range(12)])).splitlines()
    assert [line.split(" ")[1] for line in lines[1:]] == [str(i) for i in range(12)]
    assert all(line.startswith("├─ ") for line in lines[1:-1]) and lines[-1].startswith("└─ ")


def test_layer_table_counts_parameters():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 2, bias=False)))
    rows = [line.split() for line in ModelVisualizer.layer_table(model).splitlines()]
    assert rows[0] == ["name", "type", "params"]
    assert rows[1:] == [["0", "Linear", "20"], ["1", "ReLU", "0"], ["2", "Sequential", "10"], ["2.0", "Linear", "10"]]
