from confload import DictSource, EnvSource, IniSource


def test_dict_source_copies():
    data = {"a": {"b": 1}}
    loaded = DictSource(data).load()
    loaded["a"]["b"] = 2
    assert data["a"]["b"] == 1


def test_env_source_prefix():
    env = {"APP_DEBUG": "1", "APP_NAME": "demo", "OTHER": "x"}
    assert EnvSource("APP", environ=env).load() == {"debug": "1", "name": "demo"}


def test_env_source_prefix_trailing_underscore():
    env = {"APP_PORT": "80"}
    assert EnvSource("app_", environ=env).load() == {"port": "80"}


def test_ini_source_text():
    text = "[db]\nhost = localhost\nport = 5432\n"
    assert IniSource(text=text).load() == {"db": {"host": "localhost", "port": "5432"}}


def test_ini_source_missing_file(tmp_path):
    assert IniSource(path=str(tmp_path / "nope.ini")).load() == {}


def test_ini_source_file(tmp_path):
    path = tmp_path / "app.ini"
    path.write_text("[server]\nport = 8080\n")
    assert IniSource(path=str(path)).load() == {"server": {"port": "8080"}}
