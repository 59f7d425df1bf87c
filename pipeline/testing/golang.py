"""Go's own parsing and quoting, where the Ollama double must fail with the server's exact words: Ollama is written
in Go, and its error texts come from Go's standard library (``time.ParseDuration``, ``strconv.Quote``)."""

from __future__ import annotations

__all__ = ["parse_duration_ns", "quote"]

# time.ParseDuration's units, in nanoseconds.
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}


def quote(text: str) -> str:
    """Go's ``strconv.Quote`` (what ``%q`` prints): a double-quoted string with Go's escapes."""
    escapes = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               '"': '\\"', "\\": "\\\\"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else
                       f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def parse_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration`` (src/time/format.go), error texts included: a sign, then one or more
    ``<number><unit>``; a unit is required except for a bare ``0``; no spaces. Longer than most functions here:
    it follows upstream's function step by step, so that it can be read against it.

    Returns:
        Nanoseconds.

    Raises:
        ValueError: not a Go duration, with Go's message (e.g. ``time: missing unit in duration "30"``).
    """
    def time_quote(s: str) -> str:  # time.quote: control and non-ASCII characters as \x escapes of their bytes
        out = []
        for char in s:
            if char < " " or ord(char) >= 0x80:
                out += [f"\\x{b:02x}" for b in char.encode("utf-8", "surrogatepass")]
            else:
                out.append("\\" + char if char in '"\\' else char)
        return '"' + "".join(out) + '"'

    def digits(s: str) -> int:
        return next((i for i, char in enumerate(s) if not "0" <= char <= "9"), len(s))

    invalid = ValueError(f"time: invalid duration {time_quote(text)}")
    limit = 1 << 63
    rest, negative = text, False
    if rest[:1] in ("-", "+"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if not (rest[0] == "." or "0" <= rest[0] <= "9"):
            raise invalid
        pre = digits(rest)
        number, rest = rest[:pre].lstrip("0"), rest[pre:]
        if len(number) > 19 or int(number or 0) > limit:  # leadingInt's overflow
            raise invalid
        whole = int(number or 0)
        fraction, scale, post = 0, 1.0, 0
        if rest[:1] == ".":
            post = digits(rest[1:])
            for char in rest[1:1 + post]:  # leadingFraction: digits past uint64 precision are read and dropped
                following = fraction * 10 + int(char)
                if fraction > (limit - 1) // 10 or following > limit:
                    break
                fraction, scale = following, scale * 10
            rest = rest[1 + post:]
        if not pre and not post:  # no digits, e.g. ".s"
            raise invalid
        unit_end = next((i for i, char in enumerate(rest) if char == "." or "0" <= char <= "9"), len(rest))
        if unit_end == 0:
            raise ValueError(f"time: missing unit in duration {time_quote(text)}")
        name, rest = rest[:unit_end], rest[unit_end:]
        unit = _UNITS.get(name)
        if unit is None:
            raise ValueError(f"time: unknown unit {time_quote(name)} in duration {time_quote(text)}")
        if whole > limit // unit:
            raise invalid
        whole *= unit
        if fraction > 0:
            whole += int(float(fraction) * (float(unit) / scale))
            if whole > limit:
                raise invalid
        total += whole
        if total > limit:
            raise invalid
    if negative:
        return -total
    if total > limit - 1:
        raise invalid
    return total
