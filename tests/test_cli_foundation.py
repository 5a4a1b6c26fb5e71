from click.testing import CliRunner

from civitai_mirror import __version__
from civitai_mirror.cli import COMMANDS, cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "civitai-mirror " + name in result.output or "Example" in result.output, name


def test_a_file_that_is_not_sqlite_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_text("this is not a database, it is a shopping list " * 4)
    (tmp_path / "d").mkdir()
    runner = CliRunner()
    for args in (["lookup", "abcdef1234", "--db", str(bad)],
                 ["scan", str(tmp_path / "d"), "--db", str(bad), "--no-extract"],
                 ["serve", "--db", str(bad)]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.strip().splitlines() == [
            "Error: cannot use the database: file is not a database (check --db, --civitai-db and --library)"]
        assert "Traceback" not in result.output
