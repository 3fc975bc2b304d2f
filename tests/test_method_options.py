"""Method option tables: every ``--opt`` checked for type and range, one table per method."""

import pytest

from pyro_clip.cli import main
from pyro_clip.errors import ConfigError
from pyro_clip.inference.covariance import COVARIANCES
from pyro_clip.methods import create_method, get_method_class, known_methods
from pyro_clip.methods.options import Option, check_options
from pyro_clip.pipeline.config import parse_option

METHODS = known_methods()


@pytest.mark.parametrize("name", METHODS)
def test_every_option_has_a_meaning_and_valid_default(name):
    cls = get_method_class(name)
    assert set(cls.default_options()) == set(cls.OPTIONS)
    for key, opt in cls.OPTIONS.items():
        assert opt.help.strip() and opt.allowed(), key
        assert check_options(cls.OPTIONS, {key: opt.default}, name) == {key: opt.default}


@pytest.mark.parametrize("name", [m for m in METHODS if get_method_class(m).OPTIONS])
def test_a_value_of_the_wrong_type_is_refused_for_every_option(name):
    """An object no option accepts (a set) is refused for each option, naming it."""
    for key, opt in get_method_class(name).OPTIONS.items():
        with pytest.raises(ConfigError) as err:
            create_method(name, **{key: {1, 2}})
        msg = str(err.value)
        assert f"{key} must be {opt.allowed()}" in msg and "\n" not in msg


def test_lr_abc_names_the_option_type_and_range(capsys, tmp_path):
    code = main(["fit", "--method", "coop", "--opt", "lr=abc", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "lr must be a number > 0, got 'abc' (a string)" in err


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        create_method("linear-probe", lr=0.1)
    assert "has no option(s) ['lr']" in str(err.value)
    assert "valid options: center, lam, lam_grid, max_iter" in str(err.value)


@pytest.mark.parametrize(
    ("name", "key", "good", "bad"),
    [
        ("kalman", "forgetting", [1.0, 0.5, 1], [0.0, -0.1, 1.01, float("nan"), True]),
        ("kalman", "gate", [0.0, 0.999], [1.0, -1e-9]),
        ("kalman", "rank", [1, 50], [0, 2.5, True, "3"]),
        ("kalman", "batch_size", ["auto", 1, 64], [0, "big", 1.5]),
        ("kalman", "center_inputs", ["auto", True, False], [1, 0, "yes"]),
        ("kalman", "covariance", list(COVARIANCES), ["dense", None]),
        ("kalman", "prior_var_grid", [[1.0], (2, 3.5)], [[], [1.0, 0.0], "1,2"]),
        ("kalman", "prior_scale", ["auto", 100.0, 15], [0, -1.0, "big"]),
        ("kalman", "prior_cooling_grid", [[1.0], (1, 6.0)], [[], [0.5], "1,2"]),
        ("tip-adapter", "alpha", [None, 0, 2.5], [-1, "auto"]),
        ("laplace", "prior_precision", ["marglik", "val", "none", 3.0], ["cv", 0, -2.0]),
        ("coop", "select_folds", [1, 2], [0, 3]),
        ("coop", "select_grid", [None, {"lam": [0.2, 1.0]}], [[0.2], "lam"]),
        ("clip-adapter", "ratio", [0, 0.2, 1], [1.5, -0.1]),
        ("kgcoop", "w", [0, 8.0], [-1.0, float("inf")]),
        ("coop", "ctx_init", ["", "a photo of a"], [None, 3]),
    ],
)
def test_ranges_and_types_at_their_boundaries(name, key, good, bad):
    for value in good:
        create_method(name, **{key: value})
    for value in bad:
        with pytest.raises(ConfigError, match=f"{key} must be"):
            create_method(name, **{key: value})


def test_yaml_numbers_without_a_dot_are_read_as_numbers():
    """YAML 1.1 reads ``1e-3`` as a string; a number option takes it as 0.001."""
    key, value = parse_option("lr=1e-3")
    assert value == "1e-3"
    assert create_method("coop", **{key: value}).options["lr"] == pytest.approx(1e-3)
    assert create_method("kalman", prior_var_grid=(1, 2)).options["prior_var_grid"] == [1, 2]


def test_subclass_defaults_differ_but_share_the_table():
    assert create_method("coop-ove-pg").options["likelihood"] == "ove-pg"
    assert create_method("cocoop").options["lam"] == 0.1
    assert create_method("maple-ove-pg").options["n_ctx"] == 4
    assert create_method("maple").options["n_ctx"] == 2


def test_option_describes_its_range():
    assert Option(1.0, "x", float, low=0, high=1, low_open=True).allowed() == "a number in (0, 1]"
    assert Option("auto", "x", int, ("auto",), low=1).allowed() == "one of auto | an integer >= 1"
    assert Option([1.0], "x", list, low=0, item=float).allowed() == \
        "a non-empty list of numbers >= 0"


def test_list_options_prints_each_option_with_default_allowed_and_meaning(capsys):
    assert main(["list", "options", "kalman"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[2:]}
    assert set(rows) == set(get_method_class("kalman").OPTIONS)
    assert " | ".join(COVARIANCES) in rows["covariance"]
    assert "structure of the weights' Gaussian covariance" in rows["covariance"]
    assert rows["forgetting"].split()[1] == "1.0" and "(0, 1]" in rows["forgetting"]


def test_list_options_needs_a_known_method(capsys):
    assert main(["list", "options"]) == 2
    assert "name the method" in capsys.readouterr().err
    assert main(["list", "options", "kalmann"]) == 2
    assert "unknown method 'kalmann'" in capsys.readouterr().err
    assert main(["list", "options", "zero-shot"]) == 0
    assert "no options" in capsys.readouterr().out


def test_select_grid_candidates_are_checked_like_options():
    with pytest.raises(ConfigError, match="coop-ove-pg select_grid: lam must be a number >= 0"):
        create_method("coop-ove-pg", select="pseudo-new", select_grid={"lam": [0.2, -1.0]})
    create_method("coop-ove-pg", select="pseudo-new", select_grid={"lam": [0.2, 1.0]})
