import pytest

from eventbus import InvalidTopic, matches, validate_pattern, validate_topic


@pytest.mark.parametrize("topic", ["user", "user.created", "order.item-added", "a_b.c1"])
def test_valid_topics(topic):
    assert validate_topic(topic) == topic


@pytest.mark.parametrize("topic", ["", "user.", ".user", "user..x", "user.*", "us er"])
def test_invalid_topics(topic):
    with pytest.raises(InvalidTopic):
        validate_topic(topic)


def test_patterns_allow_star():
    assert validate_pattern("user.*") == "user.*"
    with pytest.raises(InvalidTopic):
        validate_pattern("user.**")


@pytest.mark.parametrize(
    "pattern, topic, expected",
    [
        ("user.created", "user.created", True),
        ("user.*", "user.created", True),
        ("*.created", "order.created", True),
        ("user.*", "user", False),
        ("user.*", "user.a.b", False),
        ("user", "users", False),
    ],
)
def test_matches(pattern, topic, expected):
    assert matches(pattern, topic) is expected
