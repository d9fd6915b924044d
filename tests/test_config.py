"""Tests of labelreg.config: the INI schema engine and labelreg's schema."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from labelreg.config import REQUIRED, Config, Key, load, parse, schema_markdown
from labelreg.errors import ConfigError
from labelreg.methods import label_driven_config

REPO = Path(__file__).resolve().parents[1]

# label-reg's config_demo.ini (reference-notes A.2), verbatim apart from the paths when asked.
CONFIG_DEMO = """\
[Data]
dir_moving_image: {root}/data/train/mr_images
dir_fixed_image: {root}/data/train/us_images
dir_moving_label: {root}/data/train/mr_labels
dir_fixed_label: {root}/data/train/us_labels


[Network]
network_type: local


[Loss]
similarity_type: dice
similarity_scales: [0, 1, 2, 4, 8, 16]
regulariser_type: bending
regulariser_weight: 0.5


[Train]
total_iterations: 10000
minibatch_size: 4
learning_rate: 1e-5
freq_info_print: 100
freq_model_save: 500
file_model_save: {root}/data/model.ckpt


[Inference]
file_model_saved: {root}/data/model.ckpt
dir_moving_image: {root}/data/test/mr_images
dir_fixed_image: {root}/data/test/us_images
dir_save: {root}/data/

# for test only
dir_moving_label: {root}/data/test/mr_labels
dir_fixed_label: {root}/data/test/us_labels

"""


def write(tmp_path: Path, text: str, name: str = "run.ini") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, overrides=(), schema=None) -> str:
    with pytest.raises(ConfigError) as info:
        if schema is None:
            load(path, overrides)
        else:
            parse(path, schema, overrides)
    return str(info.value)


# ------------------------------------------------------------------------------------------
# label-reg compatibility and defaults
# ------------------------------------------------------------------------------------------


def test_config_demo_with_relative_paths(tmp_path):
    path = write(tmp_path, CONFIG_DEMO.format(root="labelreg"))
    cfg = load(path)
    base = tmp_path / "labelreg" / "data"
    assert cfg["Data"]["dir_moving_image"] == base / "train" / "mr_images"
    assert cfg["Data"]["dir_fixed_label"] == base / "train" / "us_labels"
    assert cfg["Network"]["network_type"] == "local"
    assert cfg["Loss"]["similarity_type"] == "dice"
    assert cfg["Loss"]["similarity_scales"] == (0, 1, 2, 4, 8, 16)
    assert cfg["Loss"]["regulariser_type"] == "bending"
    assert cfg["Loss"]["regulariser_weight"] == 0.5
    train = cfg.section("Train")
    assert (train.total_iterations, train.minibatch_size) == (10000, 4)
    assert train.learning_rate == 1e-5
    assert (train.freq_info_print, train.freq_model_save) == (100, 500)
    assert train.file_model_save == base / "model.ckpt"
    assert train.dir_run == base
    assert train.dir_tensorboard == base / "tensorboard"
    inference = cfg["Inference"]
    assert inference["file_model_saved"] == base / "model.ckpt"
    assert inference["dir_save"] == base
    assert inference["dir_moving_label"] == base / "test" / "mr_labels"
    assert inference["dir_fixed_label"] == base / "test" / "us_labels"
    assert all(cfg.has_section(s) for s in ("Data", "Network", "Loss", "Train", "Inference"))


def test_config_demo_unchanged_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, CONFIG_DEMO.format(root="~/git/label-reg"))
    cfg = load(path)
    expected = tmp_path / "home" / "git" / "label-reg" / "data" / "train" / "mr_images"
    assert cfg["Data"]["dir_moving_image"] == expected
    assert cfg["Train"]["file_model_save"] == expected.parents[1] / "model.ckpt"


EXPECTED_DEFAULTS = {
    "Method": {"name": "labelreg"},
    "Data": {
        "dir_moving_image": None, "dir_fixed_image": None, "dir_moving_label": None,
        "dir_fixed_label": None, "dir_valid_moving_image": None, "dir_valid_fixed_image": None,
        "dir_valid_moving_label": None, "dir_valid_fixed_label": None, "normalise": True,
        "augmentation": True, "affine_scale": 0.1, "translation": 0.0, "intensity_gamma": 0.0,
        "intensity_noise": 0.0, "flip_axes": (), "voxel_spacing": (),
        "demo_data": None, "label0_probability": None, "case_groups": None,
        "valid_fraction": 0.0,
    },
    "Network": {"network_type": "local", "num_channel_initial": 0, "ddf_levels": (0, 1, 2, 3, 4),
                "moving_input": "resize"},
    "Loss": {
        "similarity_type": "dice", "similarity_scales": (0, 1, 2, 4, 8, 16),
        "centroid_weight": 0.0,
        "regulariser_type": "bending",
        "regulariser_weight": 0.5,
        "image_loss_type": "none", "image_loss_weight": 0.0,
    },
    "Train": {
        "total_iterations": 100000, "minibatch_size": 2, "learning_rate": 1e-5,
        "freq_info_print": 100, "freq_model_save": 500, "seed": 0, "resume": True,
        "max_checkpoints_to_keep": 3, "optimizer": "adam", "momentum": 0.9,
        "weight_decay": 0.0, "clip_norm": 0.0, "deterministic": False, "validate": True,
        "max_nonfinite_steps": 10, "strategy": "default", "precision": "float32",
        "gradient_checkpointing": False, "keep_best": "none", "lr_schedule": "constant",
        "warmup_steps": 0,
    },
    "Inference": {
        "dir_moving_image": None, "dir_fixed_image": None, "dir_moving_label": None,
        "dir_fixed_label": None, "minibatch_size": 1, "save_png": True,
        "label_interpolation": "linear", "precision": "float32",
    },
}


def test_every_default(tmp_path):
    cfg = load(write(tmp_path, "# nothing set\n"))
    for section, keys in EXPECTED_DEFAULTS.items():
        for key, value in keys.items():
            assert cfg[section][key] == value, (section, key)
    # Every schema key is covered above or derived below.
    derived = {("Train", "file_model_save"), ("Train", "dir_run"), ("Train", "dir_tensorboard"),
               ("Inference", "file_model_saved"), ("Inference", "dir_save")}
    schema_keys = {(s, k) for s, keys in label_driven_config.label_driven_schema().items() for k in keys}
    covered = {(s, k) for s, keys in EXPECTED_DEFAULTS.items() for k in keys} | derived
    assert schema_keys == covered
    run = tmp_path / "runs"
    assert cfg["Train"]["file_model_save"] == run / "model.ckpt"
    assert cfg["Train"]["dir_run"] == run
    assert cfg["Train"]["dir_tensorboard"] == run / "tensorboard"
    assert cfg["Inference"]["file_model_saved"] == run / "model.ckpt"
    assert cfg["Inference"]["dir_save"] == run / "inference"
    assert not cfg.has_section("Train")


def test_loss_choices_follow_the_registry():
    try:
        registry = importlib.import_module("labelreg.losses.registry")
        label = tuple(registry.LABEL_LOSSES)
        regularisers = tuple(registry.REGULARISERS)
        image = tuple(n for n in registry.IMAGE_LOSSES if n != "none")
    except (ImportError, AttributeError):
        label = ("dice", "cross-entropy", "mean-squared", "jaccard")
        regularisers = ("bending", "gradient-l2", "gradient-l1")
        image = ("ssd", "lncc", "nmi", "mind")
    loss = label_driven_config.label_driven_schema()["Loss"]
    assert loss["similarity_type"].choices == label
    assert loss["regulariser_type"].choices == regularisers
    assert loss["image_loss_type"].choices == ("none", *image)
    # label-reg's names must stay accepted whatever the registry adds.
    assert {"dice", "cross-entropy", "mean-squared", "jaccard"} <= set(label)
    assert {"bending", "gradient-l2", "gradient-l1"} <= set(regularisers)


# ------------------------------------------------------------------------------------------
# Value syntax
# ------------------------------------------------------------------------------------------


def test_path_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = (
        "[Data]\ndir_moving_image = ~/mr\ndir_fixed_image = ../us\n"
        "dir_moving_label = {abs}\ndir_fixed_label = ./labels/../fixed_labels\n"
        "dir_valid_moving_image =\ndir_valid_fixed_image = \n"
    ).format(abs=tmp_path / "absolute")
    sub = tmp_path / "configs"
    sub.mkdir()
    cfg = load(write(sub, text))
    data = cfg["Data"]
    assert data["dir_moving_image"] == tmp_path / "home" / "mr"
    assert data["dir_fixed_image"] == tmp_path / "us"  # against the INI's folder, not the cwd
    assert data["dir_moving_label"] == tmp_path / "absolute"
    assert data["dir_fixed_label"] == sub / "fixed_labels"
    assert data["dir_valid_moving_image"] is None
    assert data["dir_valid_fixed_image"] is None


def test_relative_paths_ignore_the_working_directory(tmp_path, monkeypatch):
    sub = tmp_path / "a"
    sub.mkdir()
    write(sub, "[Train]\nfile_model_save = out/model.ckpt\n")
    monkeypatch.chdir(tmp_path)
    assert load("a/run.ini")["Train"]["file_model_save"] == sub / "out" / "model.ckpt"


LIST_SCHEMA = {
    "S": {
        "ints": Key("int_list", (), "some ints", min=0),
        "floats": Key("float_list", (1.0,), "some floats"),
        "names": Key("str_list", ("a",), "some names", choices=("alpha", "beta", "gamma")),
    }
}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[0, 1, 2]", (0, 1, 2)),
        ("0, 1, 2", (0, 1, 2)),
        ("0 1 2", (0, 1, 2)),
        ("(3,4)", (3, 4)),
        ("[5, 6,]", (5, 6)),
        ("7", (7,)),
        ("[]", ()),
        ("", ()),
        ("[1e2, 2]", (100, 2)),
        ("[0,\n  8, 16]", (0, 8, 16)),
    ],
)
def test_int_list_forms(tmp_path, text, expected):
    cfg = parse(write(tmp_path, f"[S]\nints = {text}\n"), LIST_SCHEMA)
    assert cfg["S"]["ints"] == expected
    assert all(type(v) is int for v in cfg["S"]["ints"])


def test_float_and_str_lists(tmp_path):
    cfg = parse(
        write(tmp_path, "[S]\nfloats = [1.5, 2, -3e-1]\nnames = ['alpha', \"Beta\", gamma]\n"),
        LIST_SCHEMA,
    )
    assert cfg["S"]["floats"] == (1.5, 2.0, -0.3)
    assert cfg["S"]["names"] == ("alpha", "beta", "gamma")


@pytest.mark.parametrize("text", ["[0, a]", "[[1, 2]]", "[1.5]", "[0,,1]", "[-1]"])
def test_bad_int_lists(tmp_path, text):
    path = write(tmp_path, f"[S]\nints = {text}\n")
    message = error_of(path, schema=LIST_SCHEMA)
    assert "run.ini" in message and "[S]" in message and "ints" in message
    assert repr(text) in message
    assert "list of integers" in message


SCALAR_SCHEMA = {
    "S": {
        "n": Key("int", 1, "a count", min=1, max=10),
        "x": Key("float", 0.5, "a fraction", min=0.0, max=1.0),
        "flag": Key("bool", False, "a switch"),
        "mode": Key("str", "fast", "a mode", choices=("fast", "slow")),
        "note": Key("str", "", "free text"),
        "must": Key("int", REQUIRED, "required number"),
        "maybe": Key("int", None, "optional number"),
    }
}


@pytest.mark.parametrize(
    "line, key, expected",
    [
        ("n = 7", "n", 7),
        ("n = 1e1", "n", 10),
        ("x = 2.5e-1", "x", 0.25),
        ("x = 1", "x", 1.0),
        ("flag = Yes", "flag", True),
        ("flag = off", "flag", False),
        ("flag = 1", "flag", True),
        ("mode = SLOW", "mode", "slow"),
        ("note = hello world  ", "note", "hello world"),
        ("maybe = ", "maybe", None),
        ("maybe = 3", "maybe", 3),
    ],
)
def test_scalar_forms(tmp_path, line, key, expected):
    cfg = parse(write(tmp_path, f"[S]\nmust = 0\n{line}\n"), SCALAR_SCHEMA)
    assert cfg["S"][key] == expected
    assert type(cfg["S"][key]) is type(expected)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("n = 1.5", "an integer"),
        ("n = 0", "in [1, 10]"),
        ("n = 11", "in [1, 10]"),
        ("x = nan", "a number"),
        ("x = 1.01", "in [0.0, 1.0]"),
        ("flag = maybe", "a boolean"),
        ("mode = medium", "one of fast, slow"),
        ("must = ", "an integer"),
    ],
)
def test_scalar_errors(tmp_path, line, expected):
    preamble = "" if line.startswith("must") else "must = 0\n"
    path = write(tmp_path, f"[S]\n{preamble}{line}\n")
    message = error_of(path, schema=SCALAR_SCHEMA)
    key, value = (part.strip() for part in line.split("="))
    assert str(path) in message and "[S]" in message and key in message
    assert repr(value) in message and expected in message


def test_required_key_missing(tmp_path):
    path = write(tmp_path, "[S]\nn = 2\n")
    message = error_of(path, schema=SCALAR_SCHEMA)
    assert str(path) in message and "[S] must is required" in message


def test_missing_sections_flag(tmp_path):
    schema = {"A": {"a": Key("int", 1, "a")}, "B": {"b": Key("int", 2, "b")}}
    path = write(tmp_path, "[A]\na = 3\n")
    assert parse(path, schema)["B"]["b"] == 2
    with pytest.raises(ConfigError, match=r"missing section\(s\) \[B\]") as info:
        parse(path, schema, allow_missing_sections=False)
    assert str(path) in str(info.value)
    # An override counts as giving the section.
    assert parse(path, schema, ["B.b=4"], allow_missing_sections=False)["B"]["b"] == 4


def test_names_match_case_insensitively(tmp_path):
    cfg = load(write(tmp_path, "[train]\nLearning_Rate = 3e-4\n[LOSS]\nsimilarity_type = Dice\n"))
    assert cfg["Train"]["learning_rate"] == 3e-4
    assert cfg["Loss"]["similarity_type"] == "dice"
    assert cfg.has_section("Train") and cfg.has_section("Loss")


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_unknown_section_suggests(tmp_path):
    path = write(tmp_path, "[Trian]\nlearning_rate = 1e-4\n")
    message = error_of(path)
    assert str(path) in message and "[Trian]" in message
    assert "Did you mean 'Train'?" in message


def test_misspelt_key_suggests(tmp_path):
    path = write(tmp_path, "[Train]\nlearning_rat = 1e-4\n")
    message = error_of(path)
    assert str(path) in message and "[Train]" in message
    assert "learning_rat" in message and "'1e-4'" in message
    assert "Did you mean 'learning_rate'?" in message


def test_string_where_number_belongs(tmp_path):
    path = write(tmp_path, "[Train]\nlearning_rate = fast\n")
    message = error_of(path)
    assert str(path) in message and "[Train] learning_rate = 'fast'" in message
    assert "expected a number" in message


def test_out_of_range(tmp_path):
    path = write(tmp_path, "[Train]\nminibatch_size = 0\n")
    message = error_of(path)
    assert "[Train] minibatch_size = '0'" in message and "in [1, inf]" in message
    assert str(path) in message


def test_bad_choice_suggests(tmp_path):
    path = write(tmp_path, "[Loss]\nsimilarity_type = dise\n")
    message = error_of(path)
    assert str(path) in message and "[Loss] similarity_type = 'dise'" in message
    assert "one of dice, " in message and "Did you mean 'dice'?" in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("Train.learning_rate", "expected 'Section.key=value'"),
        ("learning_rate=1e-4", "expected 'Section.key=value'"),
        ("Train.a.b=1", "expected 'Section.key=value'"),
        (".learning_rate=1", "expected 'Section.key=value'"),
    ],
)
def test_malformed_override(tmp_path, override, expected):
    message = error_of(write(tmp_path, ""), [override])
    assert f"override {override!r}" in message and expected in message


def test_override_values_are_validated(tmp_path):
    path = write(tmp_path, "[Train]\nlearning_rate = 1e-5\n")
    message = error_of(path, ["Train.learning_rate=abc"])
    assert str(path) in message and "override 'Train.learning_rate=abc'" in message
    assert "[Train] learning_rate = 'abc'" in message and "expected a number" in message
    message = error_of(path, ["Train.learning_rte=1"])
    assert "Did you mean 'learning_rate'?" in message
    message = error_of(path, ["Trian.learning_rate=1"])
    assert "Did you mean 'Train'?" in message


def test_overrides_apply_after_the_file(tmp_path):
    path = write(tmp_path, "[Train]\nlearning_rate = 1e-5\n")
    cfg = load(path, ["Train.learning_rate = 1e-4", "Loss.similarity_scales=[0, 2]"])
    assert cfg["Train"]["learning_rate"] == 1e-4
    assert cfg["Loss"]["similarity_scales"] == (0, 2)
    assert cfg.has_section("Loss")
    with pytest.raises(ConfigError, match="single string"):
        load(path, "Train.learning_rate=1e-4")


def test_an_empty_override_removes_an_option_of_a_deselected_component(tmp_path):
    # The file selects centroid_align and sets one of its options; switching the network on the
    # command line leaves that option without an owner unless the same command line removes it.
    path = write(tmp_path, "[Network]\nnetwork_type = centroid_align\nnum_channel_segment = 4\n")
    assert load(path)["Network"]["num_channel_segment"] == 4
    message = error_of(path, ["Network.network_type=local"])
    assert "num_channel_segment" in message and "an option of network_type = centroid_align" \
        in message
    cfg = load(path, ["Network.network_type=local", "Network.num_channel_segment="])
    assert cfg["Network"]["network_type"] == "local"
    assert "num_channel_segment" not in cfg["Network"]
    # An empty override of a key nobody declares and the file does not set is still an error.
    assert "unknown key" in error_of(path, ["Network.no_such_key="])


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.ini"
    message = error_of(missing)
    assert str(missing) in message and "not found" in message


def test_unparseable_and_duplicates(tmp_path):
    message = error_of(write(tmp_path, "learning_rate = 1\n"))
    assert "run.ini" in message and "not a valid INI file" in message
    message = error_of(write(tmp_path, "[Train]\nseed = 1\nseed = 2\n"))
    assert "run.ini" in message and "seed" in message
    message = error_of(write(tmp_path, "[Train]\nseed = 1\nSeed = 2\n"))
    assert "[Train] seed is set twice" in message
    message = error_of(write(tmp_path, "[DEFAULT]\nseed = 1\n"))
    assert "unknown section [DEFAULT]" in message


# ------------------------------------------------------------------------------------------
# Cross-key checks of load()
# ------------------------------------------------------------------------------------------

DATA = "[Data]\ndir_moving_image = m\ndir_fixed_image = f\ndir_moving_label = ml\n" \
       "dir_fixed_label = fl\n"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[Train]\nlearning_rate = 0\n", "[Train] learning_rate = '0.0': expected a number > 0"),
        ("[Loss]\nsimilarity_scales = []\n", "[Loss] similarity_scales = '[]'"),
        ("[Network]\nddf_levels = [0, 0]\n", "expected distinct values"),
        ("[Data]\nvoxel_spacing = [1.5]\n", "[Data] voxel_spacing = '[1.5]'"),
        ("[Data]\nvoxel_spacing = [1.5, 0, 1]\n", "each > 0"),
        ("[Loss]\nimage_loss_type = lncc\n", "[Loss] image_loss_weight = '0.0'"),
        ("[Loss]\nimage_loss_weight = 1\n", "image_loss_type = none"),
        ("[Data]\ndir_fixed_image = f\n", "[Data] dir_moving_image = ''"),
        ("[Data]\ndir_moving_image = m\ndir_fixed_image = f\ndir_moving_label = ml\n",
         "[Data] dir_fixed_label = '': must be set together with dir_moving_label"),
        ("[Data]\ndir_moving_image = m\ndir_fixed_image = f\n", "nothing to train on"),
        (DATA + "dir_valid_moving_image = vm\n", "[Data] dir_valid_fixed_image = ''"),
        (DATA + "dir_valid_moving_label = a\ndir_valid_fixed_label = b\n",
         "[Data] dir_valid_moving_image = ''"),
        ("[Inference]\ndir_moving_image = m\n", "[Inference] dir_fixed_image = ''"),
        ("[Inference]\ndir_moving_image = m\ndir_fixed_image = f\ndir_fixed_label = l\n",
         "[Inference] dir_moving_label = ''"),
    ],
)
def test_cross_key_checks(tmp_path, text, fragment):
    path = write(tmp_path, text)
    message = error_of(path)
    assert str(path) in message and fragment in message


def test_images_only_training_with_an_image_loss(tmp_path):
    text = "[Data]\ndir_moving_image = m\ndir_fixed_image = f\n[Loss]\nimage_loss_type = LNCC\n" \
           "image_loss_weight = 1.0\n"
    cfg = load(write(tmp_path, text))
    assert cfg["Loss"]["image_loss_type"] == "lncc"
    assert cfg["Data"]["dir_moving_label"] is None


# ------------------------------------------------------------------------------------------
# Config object, writing and docs
# ------------------------------------------------------------------------------------------


def test_config_is_read_only_mapping(tmp_path):
    cfg = load(write(tmp_path, CONFIG_DEMO.format(root="x")))
    assert isinstance(cfg, Config)
    assert list(cfg) == ["Method", "Data", "Network", "Loss", "Train", "Inference"]
    with pytest.raises(TypeError):
        cfg["Train"]["learning_rate"] = 1.0  # type: ignore[index]
    with pytest.raises(KeyError, match="Did you mean 'Train'"):
        cfg["Trian"]
    assert cfg.section("Loss").regulariser_weight == 0.5
    assert cfg.path == tmp_path / "run.ini"


def test_to_ini_text_round_trips(tmp_path):
    cfg = load(
        write(tmp_path, CONFIG_DEMO.format(root="data")),
        ["Data.voxel_spacing=[1.5, 1.5, 2.0]", "Loss.image_loss_type=nmi",
         "Loss.image_loss_weight=0.1"],
    )
    other = tmp_path / "elsewhere"
    written = cfg.write(other / "config.ini")
    assert written == other / "config.ini"
    assert [p.name for p in other.iterdir()] == ["config.ini"]  # no temporary file left
    again = load(written)
    assert again.as_dict() == cfg.as_dict()
    assert again == cfg
    assert again.to_ini_text().splitlines()[1:] == cfg.to_ini_text().splitlines()[1:]


def test_generic_round_trip_with_unset_values(tmp_path):
    path = write(tmp_path, "[S]\nmust = 3\nnote = a b\n")
    cfg = parse(path, SCALAR_SCHEMA)
    assert cfg["S"]["maybe"] is None
    text = cfg.to_ini_text()
    assert "maybe =\n" in text
    copy = write(tmp_path, text, "copy.ini")
    assert parse(copy, SCALAR_SCHEMA).as_dict() == cfg.as_dict()
    lists = parse(write(tmp_path, "[S]\nnames = alpha, beta\n", "l.ini"), LIST_SCHEMA)
    copy = write(tmp_path, lists.to_ini_text(), "lcopy.ini")
    assert parse(copy, LIST_SCHEMA).as_dict() == lists.as_dict()


def test_key_validates_kind():
    with pytest.raises(ValueError, match="kind='integer'"):
        Key("integer", 1, "bad")
    assert Key("str_list", ["a"], "x", choices=["a", "b"]).choices == ("a", "b")


def test_schema_markdown_lists_every_key():
    text = schema_markdown(SCALAR_SCHEMA, {"S": "Scalars."})
    assert text.startswith("### [S]\n\nScalars.\n")
    assert "| `n` | int | `1` | a count Range: [1, 10]. |" in text
    assert "| `must` | int | required | required number |" in text
    assert "| `maybe` | int | unset | optional number |" in text
    assert "| `mode` | str | `fast` | a mode Choices: `fast`, `slow`. |" in text


def test_docs_config_md_is_current():
    docs = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert label_driven_config.generated_docs() in docs, "regenerate: python -m labelreg.methods.label_driven_config docs/config.md"
    for section, keys in label_driven_config.label_driven_schema().items():
        assert f"### [{section}]" in docs
        for key in keys:
            assert f"| `{key}` |" in docs


def test_update_docs_replaces_only_the_generated_block(tmp_path):
    target = tmp_path / "c.md"
    target.write_text("intro\n\n<!-- BEGIN GENERATED: x -->\nold\n<!-- END GENERATED -->\noutro\n")
    # Only the marker names matter; the begin marker text must be the module's own.
    target.write_text(target.read_text().replace("<!-- BEGIN GENERATED: x -->", label_driven_config._BEGIN))
    label_driven_config.update_docs(target)
    text = target.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\noutro\n")
    assert label_driven_config.generated_docs() in text and "\nold\n" not in text


def test_required_sentinel_is_singleton():
    assert repr(REQUIRED) == "REQUIRED"
    assert type(REQUIRED)() is REQUIRED
