import pytest

from eventbus import Event, EventBus, InvalidTopic


def test_publish_in_subscription_order():
    bus = EventBus()
    seen = []
    bus.subscribe("user.*", lambda e: seen.append(("any", e.topic)))
    bus.subscribe("user.created", lambda e: seen.append(("created", e.payload)))
    bus.subscribe("order.*", lambda e: seen.append(("order", e.topic)))
    bus.publish("user.created", 7)
    assert seen == [("any", "user.created"), ("created", 7)]
    assert bus.published == 1


def test_results_and_decorator():
    bus = EventBus()

    @bus.on("ping")
    def pong(event: Event) -> str:
        return "pong"

    assert bus.publish("ping") == ["pong"]
    assert pong(Event("x")) == "pong"


def test_unsubscribe_and_cancel():
    bus = EventBus()
    sub = bus.subscribe("a", lambda e: 1)
    assert len(bus) == 1
    assert sub.cancel() is True
    assert sub.cancel() is False
    assert bus.publish("a") == []
    assert not sub.active


def test_handler_cancelling_a_later_one():
    bus = EventBus()
    later = None

    def first(event):
        later.cancel()
        return 1

    bus.subscribe("a", first)
    later = bus.subscribe("a", lambda e: 2)
    assert bus.publish("a") == [1]
    assert later.calls == 0


def test_calls_counted_and_clear():
    bus = EventBus()
    sub = bus.subscribe("a.*", lambda e: None)
    bus.publish("a.b")
    bus.publish("a.c")
    assert sub.calls == 2
    bus.clear()
    assert len(bus) == 0 and not sub.active


def test_validation():
    bus = EventBus()
    with pytest.raises(InvalidTopic):
        bus.subscribe("a..b", lambda e: None)
    with pytest.raises(TypeError):
        bus.subscribe("a", "not callable")
    with pytest.raises(InvalidTopic):
        bus.publish("a.*")
