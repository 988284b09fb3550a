"""RetryPolicy: defaults, validation, backoff with jitter, and which failures are retried."""

from __future__ import annotations

import pytest

from eventbus import ConfigurationError, Retry, RetryPolicy

# -- defaults and construction --------------------------------------------------------


def test_defaults() -> None:
    """RetryPolicy() is 3 attempts, 0.1 s doubling up to 30 s, 10% jitter, any Exception."""
    policy = RetryPolicy()

    assert policy.max_attempts == 3
    assert policy.initial_delay == 0.1
    assert policy.max_delay == 30
    assert policy.multiplier == 2
    assert policy.jitter == 0.1
    assert policy.retry_on == (Exception,)
    assert policy.give_up_on == ()


def test_none_is_a_single_attempt() -> None:
    """RetryPolicy.none() allows one attempt and never retries."""
    policy = RetryPolicy.none()

    assert policy.max_attempts == 1
    assert policy.should_retry(ValueError("boom"), attempt=1) is False


def test_policies_with_equal_settings_are_equal() -> None:
    """Two policies built from the same settings compare equal."""
    assert RetryPolicy() == RetryPolicy()
    assert RetryPolicy(max_attempts=5) != RetryPolicy()


@pytest.mark.parametrize("field", ["retry_on", "give_up_on"])
def test_a_single_exception_class_is_accepted(field: str) -> None:
    """retry_on= and give_up_on= take a single class as a one-element tuple."""
    policy = RetryPolicy(**{field: KeyError})  # type: ignore[arg-type]

    assert getattr(policy, field) == (KeyError,)


def test_a_list_of_exception_classes_is_stored_as_a_tuple() -> None:
    """retry_on= given as a list is kept as a tuple, so the policy stays immutable."""
    policy = RetryPolicy(retry_on=[KeyError, OSError])  # type: ignore[arg-type]

    assert policy.retry_on == (KeyError, OSError)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_attempts": 0}, id="max_attempts-zero"),
        pytest.param({"max_attempts": -1}, id="max_attempts-negative"),
        pytest.param({"max_attempts": True}, id="max_attempts-bool"),
        pytest.param({"max_attempts": 1.5}, id="max_attempts-float"),
        pytest.param({"max_attempts": "3"}, id="max_attempts-str"),
        pytest.param({"initial_delay": -0.1}, id="initial_delay-negative"),
        pytest.param({"max_delay": -1}, id="max_delay-negative"),
        pytest.param({"initial_delay": "1"}, id="initial_delay-str"),
        pytest.param({"initial_delay": True}, id="initial_delay-bool"),
        pytest.param({"multiplier": 0.5}, id="multiplier-below-one"),
        pytest.param({"multiplier": 0}, id="multiplier-zero"),
        pytest.param({"jitter": -0.01}, id="jitter-negative"),
        pytest.param({"jitter": 1.01}, id="jitter-above-one"),
        pytest.param({"retry_on": "ValueError"}, id="retry_on-str"),
        pytest.param({"retry_on": (ValueError, 3)}, id="retry_on-non-class"),
        pytest.param({"retry_on": int}, id="retry_on-non-exception-class"),
        pytest.param({"retry_on": ValueError("x")}, id="retry_on-instance"),
        pytest.param({"give_up_on": (str,)}, id="give_up_on-non-exception-class"),
        pytest.param({"give_up_on": None}, id="give_up_on-none"),
    ],
)
def test_invalid_options_raise_configuration_error(options: dict[str, object]) -> None:
    """An out-of-range or ill-typed option raises ConfigurationError, also a ValueError."""
    with pytest.raises(ConfigurationError, match=r"RetryPolicy\(") as caught:
        RetryPolicy(**options)  # type: ignore[arg-type]

    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"initial_delay": float("nan")}, id="initial_delay"),
        pytest.param({"max_delay": float("nan")}, id="max_delay"),
        pytest.param({"multiplier": float("nan")}, id="multiplier"),
    ],
)
def test_nan_delays_are_rejected(options: dict[str, float]) -> None:
    """NaN is not a number of seconds >= 0 (or a multiplier >= 1): ConfigurationError."""
    with pytest.raises(ConfigurationError):
        RetryPolicy(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_attempts": 1}, id="one-attempt"),
        pytest.param({"initial_delay": 0, "max_delay": 0}, id="zero-delays"),
        pytest.param({"multiplier": 1}, id="constant-backoff"),
        pytest.param({"jitter": 0}, id="no-jitter"),
        pytest.param({"jitter": 1}, id="full-jitter"),
        pytest.param({"retry_on": ()}, id="retry-on-nothing"),
        pytest.param({"retry_on": (BaseException,)}, id="retry-on-base-exception"),
    ],
)
def test_boundary_options_are_accepted(options: dict[str, object]) -> None:
    """Options on the edge of their range are valid."""
    RetryPolicy(**options)  # type: ignore[arg-type]


# -- delay ----------------------------------------------------------------------------


def test_delay_without_jitter_follows_the_capped_exponential_formula() -> None:
    """With jitter=0 the delay is exactly initial * multiplier**(attempt-1), capped."""
    policy = RetryPolicy(initial_delay=0.25, multiplier=3, max_delay=5, jitter=0)

    delays = [policy.delay(attempt) for attempt in range(1, 7)]

    assert delays == [0.25, 0.75, 2.25, 5, 5, 5]


def test_delay_with_multiplier_one_is_constant() -> None:
    """multiplier=1 waits initial_delay before every retry."""
    policy = RetryPolicy(initial_delay=0.5, multiplier=1, jitter=0)

    assert {policy.delay(attempt) for attempt in range(1, 10)} == {0.5}


def test_default_delays_double_from_a_tenth_of_a_second() -> None:
    """The default policy without jitter waits 0.1, 0.2, 0.4 ... seconds."""
    policy = RetryPolicy(jitter=0)

    assert [policy.delay(attempt) for attempt in (1, 2, 3)] == [0.1, 0.2, 0.4]


@pytest.mark.parametrize("jitter", [0.1, 0.5, 1.0])
def test_jittered_delay_stays_within_its_bounds_and_varies(jitter: float) -> None:
    """With jitter j every delay lies in [base * (1 - j), base], and draws differ."""
    policy = RetryPolicy(initial_delay=1, multiplier=2, max_delay=30, jitter=jitter)
    base = 4.0  # attempt 3: 1 * 2**2

    delays = [policy.delay(3) for _ in range(2_000)]

    assert all(base * (1 - jitter) <= d <= base for d in delays)
    assert len(set(delays)) > 1


def test_jitter_applies_below_the_cap() -> None:
    """A capped delay is jittered downwards from max_delay, never above it."""
    policy = RetryPolicy(initial_delay=10, max_delay=12, jitter=0.5)

    delays = [policy.delay(5) for _ in range(1_000)]

    assert all(6 <= d <= 12 for d in delays)


def test_retry_delay_overrides_the_backoff() -> None:
    """Retry(delay=...) raised by a handler sets the wait, whatever the policy says."""
    policy = RetryPolicy(initial_delay=1, jitter=0.5)

    assert policy.delay(1, Retry(delay=7.5)) == 7.5
    assert policy.delay(3, Retry(delay=0)) == 0


def test_retry_without_delay_uses_the_backoff() -> None:
    """Retry() without a delay waits as the policy's backoff says."""
    policy = RetryPolicy(initial_delay=0.5, multiplier=2, jitter=0)

    assert policy.delay(2, Retry()) == 1.0


def test_other_errors_do_not_change_the_delay() -> None:
    """An ordinary exception passed to delay() leaves the backoff as it is."""
    policy = RetryPolicy(initial_delay=0.5, jitter=0)

    assert policy.delay(1, ValueError("boom")) == 0.5


def test_negative_retry_delay_raises_value_error() -> None:
    """Retry(delay=-1) is refused with a ValueError when the handler builds it."""
    with pytest.raises(ValueError, match="delay"):
        Retry(delay=-1)


def test_retry_keeps_its_delay_and_message() -> None:
    """Retry carries the requested delay and a message."""
    request = Retry("stock service busy", delay=5)

    assert request.delay == 5
    assert str(request) == "stock service busy"


# -- should_retry ---------------------------------------------------------------------


def test_failures_are_retried_until_max_attempts() -> None:
    """Attempts before max_attempts are retried; the last one is not."""
    policy = RetryPolicy(max_attempts=3)
    error = RuntimeError("boom")

    assert [policy.should_retry(error, attempt) for attempt in (1, 2, 3, 4)] == [
        True,
        True,
        False,
        False,
    ]


def test_give_up_on_wins_over_retry_on() -> None:
    """An exception in give_up_on is not retried even when retry_on also matches it."""
    policy = RetryPolicy(retry_on=(LookupError,), give_up_on=(KeyError,))

    assert policy.should_retry(KeyError("sku"), attempt=1) is False
    assert policy.should_retry(IndexError("line"), attempt=1) is True


def test_exception_outside_retry_on_is_not_retried() -> None:
    """An exception that retry_on does not match is not retried."""
    policy = RetryPolicy(retry_on=(ConnectionError,))

    assert policy.should_retry(ValueError("bad input"), attempt=1) is False
    assert policy.should_retry(ConnectionResetError(), attempt=1) is True


def test_retry_request_is_retried_even_outside_retry_on() -> None:
    """Retry raised by a handler gets another attempt whatever retry_on says."""
    policy = RetryPolicy(retry_on=(ConnectionError,))

    assert policy.should_retry(Retry(), attempt=1) is True


def test_retry_request_still_counts_against_max_attempts() -> None:
    """Retry does not get another attempt once max_attempts is reached."""
    policy = RetryPolicy(max_attempts=2)

    assert policy.should_retry(Retry(delay=1), attempt=2) is False


def test_base_exceptions_are_not_retried_by_default() -> None:
    """The default retry_on is Exception: a BaseException such as KeyboardInterrupt is not."""
    policy = RetryPolicy()

    assert policy.should_retry(KeyboardInterrupt(), attempt=1) is False


def test_timeout_is_retried_by_default() -> None:
    """A handler that ran past its timeout (a TimeoutError) is retried by default."""
    assert RetryPolicy().should_retry(TimeoutError(), attempt=1) is True
