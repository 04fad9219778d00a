"""OUCH 5.0 codec (layouts from the specification's field tables, fuzzing) and the OUCH <-> matchwire
translator, driven against the reference engine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange import ouch
from exchange.engine import Exchange
from exchange.instruments import Instrument
from exchange.orders import CancelReason, NewOrder, RejectReason, TimeInForce
from exchange.ouch import OuchError, OuchTranslator, decode_inbound, decode_outbound, encode_inbound, encode_outbound

TS = 34_200_000_000_000  # 09:30:00 in nanoseconds since midnight


def be(value: int, width: int) -> bytes:
    return value.to_bytes(width, "big")


# -- layouts, byte for byte -------------------------------------------------------------------------------


def test_enter_order_layout():
    raw = encode_inbound("O", user_ref_num=1, side="B", quantity=100, symbol="AAPL", price=1_500_000,
                         time_in_force="0", display="Y", capacity="A", inter_market_sweep_eligibility="N",
                         cross_type="N", cl_ord_id="ORD1")
    expected = (b"O" + be(1, 4) + b"B" + be(100, 4) + b"AAPL    " + be(1_500_000, 8) + b"0" + b"Y" + b"A" + b"N"
                + b"N" + b"ORD1          " + be(0, 2))
    assert raw == expected and len(raw) == 47
    assert decode_inbound(raw) == {"type": "O", "user_ref_num": 1, "side": "B", "quantity": 100, "symbol": "AAPL",
                                   "price": 1_500_000, "time_in_force": "0", "display": "Y", "capacity": "A",
                                   "inter_market_sweep_eligibility": "N", "cross_type": "N", "cl_ord_id": "ORD1",
                                   "options": {}}


def test_enter_order_with_appendage():
    raw = encode_inbound("O", user_ref_num=7, side="S", quantity=300, symbol="MSFT", price=2_500_100,
                         time_in_force="3", display="Y", capacity="P", inter_market_sweep_eligibility="N",
                         cross_type="N", cl_ord_id="", options={"min_qty": 300, "firm": "MM2"})
    # Appendage: length 12 = two TagValue elements of 6 bytes: a length byte (5: tag + 4-byte value),
    # the tag, the value.
    appendage = b"\x05\x03" + be(300, 4) + b"\x05\x02" + b"MM2 "
    assert raw[-14:] == be(12, 2) + appendage
    assert len(raw) == 47 + 12
    assert decode_inbound(raw)["options"] == {"min_qty": 300, "firm": "MM2"}


def test_replace_cancel_modify_query_layouts():
    replace = encode_inbound("U", orig_user_ref_num=1, user_ref_num=2, quantity=50, price=1_490_000,
                             time_in_force="0", display="Y", inter_market_sweep_eligibility="N", cl_ord_id="R2")
    assert replace == (b"U" + be(1, 4) + be(2, 4) + be(50, 4) + be(1_490_000, 8) + b"0YN" + b"R2".ljust(14)
                       + be(0, 2))
    assert len(replace) == 40
    assert encode_inbound("X", user_ref_num=9, quantity=0) == b"X" + be(9, 4) + be(0, 4)
    assert encode_inbound("M", user_ref_num=9, side="T", quantity=80) == b"M" + be(9, 4) + b"T" + be(80, 4)
    assert encode_inbound("Q") == b"Q"


def test_outbound_layouts():
    accepted = encode_outbound("A", timestamp=TS, user_ref_num=1, side="B", quantity=100, symbol="AAPL",
                               price=1_500_000, time_in_force="0", display="Y", order_reference_number=77,
                               capacity="A", inter_market_sweep_eligibility="N", cross_type="N", order_state="L",
                               cl_ord_id="ORD1")
    assert accepted == (b"A" + be(TS, 8) + be(1, 4) + b"B" + be(100, 4) + b"AAPL    " + be(1_500_000, 8) + b"0Y"
                        + be(77, 8) + b"ANNL" + b"ORD1".ljust(14) + be(0, 2))
    assert len(accepted) == 64
    assert encode_outbound("C", timestamp=TS, user_ref_num=1, quantity=40, reason="U") == (
        b"C" + be(TS, 8) + be(1, 4) + be(40, 4) + b"U")
    assert encode_outbound("E", timestamp=TS, user_ref_num=1, quantity=60, price=1_500_000, liquidity_flag="A",
                           match_number=5) == (b"E" + be(TS, 8) + be(1, 4) + be(60, 4) + be(1_500_000, 8) + b"A"
                                               + be(5, 8) + be(0, 2))
    # The reject reason is a 2-byte integer code in OUCH 5.0 (0x17: invalid symbol).
    assert encode_outbound("J", timestamp=TS, user_ref_num=3, reason=0x17, cl_ord_id="X") == (
        b"J" + be(TS, 8) + be(3, 4) + b"\x00\x17" + b"X".ljust(14))
    assert encode_outbound("I", timestamp=TS, user_ref_num=3) == b"I" + be(TS, 8) + be(3, 4)
    assert encode_outbound("M", timestamp=TS, user_ref_num=3, side="S", quantity=9) == (
        b"M" + be(TS, 8) + be(3, 4) + b"S" + be(9, 4))
    assert encode_outbound("S", timestamp=TS, event_code="S") == b"S" + be(TS, 8) + b"S"
    assert encode_outbound("Q", timestamp=TS, next_user_ref_num=12) == b"Q" + be(TS, 8) + be(12, 4)
    replaced = encode_outbound("U", timestamp=TS, orig_user_ref_num=1, user_ref_num=2, side="B", quantity=50,
                               symbol="AAPL", price=1_490_000, time_in_force="0", display="Y",
                               order_reference_number=77, capacity="A", inter_market_sweep_eligibility="N",
                               cross_type="N", order_state="L", cl_ord_id="R2")
    assert replaced[:17] == b"U" + be(TS, 8) + be(1, 4) + be(2, 4) and len(replaced) == 68


def test_table_lengths():
    assert {c: s.length for c, s in ouch.INBOUND_SPECS.items()} == {"O": 47, "U": 40, "X": 9, "M": 10, "Q": 1}
    lengths = {c: s.length for c, s in ouch.OUTBOUND_SPECS.items()}
    assert lengths["A"] == 64 and lengths["U"] == 68 and lengths["C"] == 18 and lengths["E"] == 36
    assert lengths["J"] == 29 and lengths["I"] == 13 and lengths["M"] == 18 and lengths["S"] == 10


def test_unknown_options_are_kept_and_skipped():
    raw = encode_inbound("X", user_ref_num=1, quantity=0)
    enter = encode_inbound("O", user_ref_num=1, side="B", quantity=1, symbol="A", price=1, time_in_force="0",
                           display="Y", capacity="A", inter_market_sweep_eligibility="N", cross_type="N",
                           cl_ord_id="", options={"tag_99": b"\x01\x02\x03", "max_floor": 10})
    msg = decode_inbound(enter)
    assert msg["options"] == {"tag_99": b"\x01\x02\x03", "max_floor": 10}
    assert encode_inbound(**msg) == enter
    assert decode_inbound(raw)["quantity"] == 0


def test_encode_errors():
    with pytest.raises(OuchError):
        encode_inbound("X", user_ref_num=1)
    with pytest.raises(OuchError):
        encode_inbound("X", user_ref_num=1, quantity=1, bogus=2)
    with pytest.raises(OuchError):
        encode_inbound("X", user_ref_num=-1, quantity=1)
    with pytest.raises(OuchError):
        encode_inbound("X", user_ref_num=1.0, quantity=1)
    with pytest.raises(OuchError):
        encode_inbound("Z")
    with pytest.raises(OuchError):
        encode_outbound("J", timestamp=0, user_ref_num=1, reason=1, cl_ord_id="x" * 15)
    with pytest.raises(OuchError):
        encode_inbound("Q", options={"nope": 1})


# -- malformed input --------------------------------------------------------------------------------------


def _enter(**options) -> bytes:
    return encode_inbound("O", user_ref_num=1, side="B", quantity=1, symbol="A", price=1, time_in_force="0",
                          display="Y", capacity="A", inter_market_sweep_eligibility="N", cross_type="N",
                          cl_ord_id="", options=options)


@pytest.mark.parametrize("raw, offset, words", [
    (b"", 0, "empty"),
    (b"Z", 0, "unknown"),
    (b"X" + bytes(7), 0, "must be 9"),
    (b"X" + bytes(9), 0, "must be 9"),
    (b"Q\x00", 0, "must be 1"),
    (_enter()[:-2], 0, "must be 47"),
    (_enter() + b"\x02", 45, "appendage length 0"),
    (_enter()[:-2] + b"\x00\x02\x00\x03", 47, "length 0"),
    (_enter()[:-2] + b"\x00\x02\x05\x03", 47, "runs past"),
    (_enter()[:-2] + b"\x00\x03\x02\x03\x01", 47, "must be 4"),
    (_enter(min_qty=1)[:-8] + b"\x00\x0c" + _enter(min_qty=1)[-6:] * 2, 53, "twice"),
    (_enter()[:5] + b"\xc0" + _enter()[6:], 5, "not ASCII"),
])
def test_malformed_inbound(raw, offset, words):
    with pytest.raises(OuchError) as info:
        decode_inbound(raw)
    assert info.value.offset == offset and words in info.value.reason


def _valid_messages() -> list[bytes]:
    return [_enter(min_qty=1, firm="F1", tag_200=b"zz"), encode_inbound("X", user_ref_num=1, quantity=1),
            encode_inbound("M", user_ref_num=1, side="S", quantity=1), encode_inbound("Q"),
            encode_inbound("U", orig_user_ref_num=1, user_ref_num=2, quantity=1, price=1, time_in_force="0",
                           display="Y", inter_market_sweep_eligibility="N", cl_ord_id="", options={"max_floor": 1})]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes_only_raise_ouch_error(data):
    for decode in (decode_inbound, decode_outbound):
        try:
            msg = decode(data)
        except OuchError as exc:
            assert exc.offset is not None and 0 <= exc.offset <= len(data)
        else:
            encoder = encode_inbound if decode is decode_inbound else encode_outbound
            assert encoder(**msg) == data


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(range(5)), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
       st.integers(-3, 3))
def test_fuzz_mutated_messages_only_raise_ouch_error(pick, mutations, resize):
    data = bytearray(_valid_messages()[pick])
    for pos, value in mutations:
        data[pos % len(data)] = value
    if resize > 0:
        data += bytes(resize)
    elif resize < 0:
        del data[resize:]
    try:
        msg = decode_inbound(bytes(data))
    except OuchError:
        return
    assert encode_inbound(**msg) == bytes(data)


def _value_for(kind: str, width: int):
    if kind == ouch.ALPHA and width == 1:
        return st.sampled_from("ABYN0 ")  # one-character codes come back exactly, a space included
    if kind == ouch.ALPHA:
        return st.text("ABCxyz019", max_size=width)
    return st.integers(0, (1 << (8 * width)) - 1)


@st.composite
def _messages(draw, specs):
    spec = draw(st.sampled_from(list(specs.values())))
    msg = {"type": spec.code}
    for name, kind, width in spec.fields:
        if kind == ouch.APPENDAGE:
            msg[name] = draw(st.dictionaries(st.sampled_from(["min_qty", "max_floor", "firm", "post_only"]),
                                             st.just(0), max_size=3))
            msg[name] = {k: ("P" if k == "post_only" else "F" if k == "firm" else v) for k, v in msg[name].items()}
        else:
            msg[name] = draw(_value_for(kind, width))
    return msg


@settings(max_examples=100, deadline=None)
@given(_messages(ouch.INBOUND_SPECS), _messages(ouch.OUTBOUND_SPECS))
def test_roundtrip_every_message_type(inbound, outbound):
    assert decode_inbound(encode_inbound(**inbound)) == inbound
    assert decode_outbound(encode_outbound(**outbound)) == outbound


@settings(max_examples=200, deadline=None)
@given(_messages(ouch.OUTBOUND_SPECS), st.sampled_from([None, "", "x" * 15, "\u00e9", 1.5, True, -1, 1 << 64, "drop"]),
       st.integers(0, 30))
def test_generated_encoders_equal_the_checked_path(message, bad, where):
    # The straight-line encoders must give the same bytes for good values and the same OuchError for bad ones.
    code = message.pop("type")
    names = [name for name, _, _ in ouch.OUTBOUND_SPECS[code].fields]
    if bad is not None and names:
        name = names[where % len(names)]
        if bad == "drop":
            del message[name]
        else:
            message[name] = bad
    try:
        fast: object = encode_outbound(code, **message)
    except OuchError as exc:
        fast = ("error", str(exc))
    try:
        checked: object = ouch._encode(ouch.OUTBOUND_SPECS, "outbound", code, message)
    except OuchError as exc:
        checked = ("error", str(exc))
    assert fast == checked


# -- reason codes -------------------------------------------------------------------------------------


def test_reason_map_covers_every_engine_reason():
    for cls, kind in ((RejectReason, ouch.REJECT), (CancelReason, ouch.CANCEL)):
        for name, value in vars(cls).items():
            if name.isupper():
                assert ouch.REASON_MAP[value][0] == kind, value
    for kind, code in ouch.REASON_MAP.values():
        assert code in (ouch.REJECT_REASON_NAMES if kind == ouch.REJECT else ouch.CANCEL_REASON_NAMES)
    from exchange.wire import ClusterReason
    cluster_and_risk = [ClusterReason]
    try:
        from exchange.risk import RiskReason
        cluster_and_risk.append(RiskReason)
    except ImportError:  # risk (#7) not in this tree
        pass
    for cls in cluster_and_risk:
        for name, value in vars(cls).items():
            if name.isupper():
                assert ouch.REASON_MAP[value][0] == ouch.REJECT, value
    assert ouch.matchwire_reason(ouch.CANCEL, "U") == CancelReason.USER
    assert ouch.ouch_reason("some_future_risk_reason", ouch.REJECT) == 0x0F
    assert ouch.ouch_reason("some_future_risk_reason", ouch.CANCEL) == "Z"


# -- the translator, against the reference engine -------------------------------------------------------


class Venue:
    """A translator wired to the reference engine, the way a gateway would wire it to the cluster."""

    def __init__(self, instruments=None):
        self.exchange = Exchange(instruments)
        self.tr = OuchTranslator({"U1": ["ACC1", "ACC2"], "U2": ["ACC3"], "U3": []}, clock=lambda: TS)
        self.commands = []

    def send(self, user: str, payload: bytes) -> list[tuple[str, dict]]:
        result = self.tr.on_message(user, payload)
        assert result.error is None
        out = [(user, r) for r in result.replies]
        for command in result.commands:
            self.commands.append(command)
            out += self.tr.on_events(self.exchange.process(command))
        return [(u, decode_outbound(p)) for u, p in out]

    def enter(self, user, ref, side, qty, price, tif="5", **kw):
        options = kw.pop("options", {})
        fields = dict(user_ref_num=ref, side=side, quantity=qty, symbol=kw.pop("symbol", "AAPL"), price=price,
                      time_in_force=tif, display=kw.pop("display", "Y"), capacity="A",
                      inter_market_sweep_eligibility="N", cross_type=kw.pop("cross_type", "N"),
                      cl_ord_id=kw.pop("cl_ord_id", f"C{ref}"), options=options)
        assert not kw
        return self.send(user, encode_inbound("O", **fields))


class LateVenue(Venue):
    """A venue whose books answer only when told (:meth:`deliver`), as in a cluster: the client's next messages
    reach the translator before the answers to its earlier ones."""

    def send(self, user: str, payload: bytes) -> list[tuple[str, dict]]:
        result = self.tr.on_message(user, payload)
        assert result.error is None
        self.commands += result.commands
        return [(user, decode_outbound(p)) for p in result.replies]

    def deliver(self) -> list[tuple[str, dict]]:
        out = []
        for command in self.commands:
            out += self.tr.on_events(self.exchange.process(command))
        self.commands = []
        return [(u, decode_outbound(p)) for u, p in out]


def kinds(out):
    return [(u, m["type"]) for u, m in out]


def test_enter_is_accepted_with_echoed_fields():
    v = Venue()
    [(user, msg)] = v.enter("U1", 1, "B", 100, 1_500_000)
    assert user == "U1"
    assert msg == {"type": "A", "timestamp": TS, "user_ref_num": 1, "side": "B", "quantity": 100, "symbol": "AAPL",
                   "price": 1_500_000, "time_in_force": "5", "display": "Y", "order_reference_number": 1,
                   "capacity": "A", "inter_market_sweep_eligibility": "N", "cross_type": "N", "order_state": "L",
                   "cl_ord_id": "C1", "options": {}}
    command = v.commands[0]
    assert isinstance(command, NewOrder) and command.account == "ACC1" and command.tif == TimeInForce.GTC


def test_a_trade_reports_to_both_users():
    v = Venue()
    v.enter("U1", 1, "S", 100, 1_000_000)
    out = v.enter("U2", 1, "B", 60, 1_000_100)
    assert kinds(out) == [("U2", "A"), ("U1", "E"), ("U2", "E")]
    maker, taker = out[1][1], out[2][1]
    assert (maker["user_ref_num"], maker["quantity"], maker["price"]) == (1, 60, 1_000_000)
    assert maker["liquidity_flag"] == "A"
    assert (taker["user_ref_num"], taker["liquidity_flag"], taker["match_number"]) == (1, "R", maker["match_number"])


def test_cancel_quantity_is_the_intended_order_size():
    v = Venue()
    v.enter("U1", 1, "S", 100, 1_000_000)
    v.enter("U2", 1, "B", 60, 1_000_000)  # U1 has executed 60, 40 left
    out = v.send("U1", encode_inbound("X", user_ref_num=1, quantity=80))  # at most 80 in total: cut 20
    assert kinds(out) == [("U1", "C")] and out[0][1]["quantity"] == 20 and out[0][1]["reason"] == "U"
    out = v.send("U1", encode_inbound("X", user_ref_num=1, quantity=90))  # would grow: refused
    assert kinds(out) == [("U1", "I")]
    out = v.send("U1", encode_inbound("X", user_ref_num=1, quantity=0))
    assert kinds(out) == [("U1", "C")] and out[0][1]["quantity"] == 20
    assert kinds(v.send("U1", encode_inbound("X", user_ref_num=1, quantity=0))) == [("U1", "I")]


def test_nobody_can_touch_another_users_order():
    v = Venue()
    v.enter("U1", 5, "B", 100, 1_000_000)
    assert kinds(v.send("U2", encode_inbound("X", user_ref_num=5, quantity=0))) == [("U2", "I")]
    out = v.send("U2", encode_inbound("U", orig_user_ref_num=5, user_ref_num=6, quantity=1, price=1, time_in_force="0",
                                      display="Y", inter_market_sweep_eligibility="N", cl_ord_id=""))
    assert out == []
    out = v.send("U2", encode_inbound("M", user_ref_num=5, side="B", quantity=1))
    assert kinds(out) == [("U2", "J")]
    assert v.exchange.book("AAPL").resting_qty() == 100


def test_user_ref_nums_must_increase():
    v = Venue()
    v.enter("U1", 10, "B", 1, 1_000_000)
    for ref in (10, 9, 0):
        result = v.tr.on_message("U1", encode_inbound("O", user_ref_num=ref, side="B", quantity=1, symbol="AAPL",
                                                      price=1, time_in_force="0", display="Y", capacity="A",
                                                      inter_market_sweep_eligibility="N", cross_type="N",
                                                      cl_ord_id=""))
        assert result.ignored and not result.commands and not result.replies
    assert kinds(v.enter("U2", 1, "B", 1, 1_000_000)) == [("U2", "A")]  # per user
    assert decode_outbound(v.tr.on_message("U1", encode_inbound("Q")).replies[0])["next_user_ref_num"] == 11


def test_replace_moves_the_order_to_a_new_user_ref_num():
    v = Venue()
    v.enter("U1", 1, "B", 100, 1_000_000)
    out = v.send("U1", encode_inbound("U", orig_user_ref_num=1, user_ref_num=2, quantity=50, price=1_000_200,
                                      time_in_force="0", display="Y", inter_market_sweep_eligibility="N",
                                      cl_ord_id="NEW"))
    [(user, msg)] = out
    assert (msg["type"], msg["orig_user_ref_num"], msg["user_ref_num"], msg["quantity"], msg["price"],
            msg["cl_ord_id"], msg["order_reference_number"]) == ("U", 1, 2, 50, 1_000_200, "NEW", 1)
    assert kinds(v.send("U1", encode_inbound("X", user_ref_num=1, quantity=0))) == [("U1", "I")]
    # A replacement UserRefNum that was already used is ignored.
    used = encode_inbound("U", orig_user_ref_num=2, user_ref_num=2, quantity=5, price=1, time_in_force="0",
                          display="Y", inter_market_sweep_eligibility="N", cl_ord_id="")
    assert v.send("U1", used) == []
    out = v.send("U1", encode_inbound("X", user_ref_num=2, quantity=0))
    assert kinds(out) == [("U1", "C")] and out[0][1]["quantity"] == 50


def test_replace_that_trades_and_invalid_replace():
    v = Venue()
    v.enter("U2", 1, "S", 30, 1_000_100)
    v.enter("U1", 1, "B", 100, 1_000_000)
    out = v.send("U1", encode_inbound("U", orig_user_ref_num=1, user_ref_num=2, quantity=100, price=1_000_100,
                                      time_in_force="0", display="Y", inter_market_sweep_eligibility="N",
                                      cl_ord_id=""))
    assert kinds(out) == [("U1", "U"), ("U2", "E"), ("U1", "E")]
    assert out[2][1]["user_ref_num"] == 2
    bad = encode_inbound("U", orig_user_ref_num=2, user_ref_num=3, quantity=0, price=1, time_in_force="0",
                         display="Y", inter_market_sweep_eligibility="N", cl_ord_id="Z")
    out = v.send("U1", bad)
    assert kinds(out) == [("U1", "J")] and out[0][1]["user_ref_num"] == 3 and out[0][1]["reason"] == 0x13
    off_tick = Venue({"AAPL": Instrument("AAPL", tick_size=100)})
    off_tick.enter("U1", 1, "B", 10, 1_000_000)
    out = off_tick.send("U1", encode_inbound("U", orig_user_ref_num=1, user_ref_num=2, quantity=10, price=1_000_001,
                                             time_in_force="0", display="Y", inter_market_sweep_eligibility="N",
                                             cl_ord_id="Q"))
    assert kinds(out) == [("U1", "J")] and out[0][1]["reason"] == 0x1D and out[0][1]["user_ref_num"] == 2
    assert kinds(off_tick.send("U1", encode_inbound("X", user_ref_num=1, quantity=0))) == [("U1", "C")]


def test_modify():
    v = Venue()
    v.enter("U1", 1, "S", 100, 1_000_000)
    out = v.send("U1", encode_inbound("M", user_ref_num=1, side="T", quantity=70))
    assert kinds(out) == [("U1", "M")] and (out[0][1]["side"], out[0][1]["quantity"]) == ("T", 70)
    assert kinds(v.send("U1", encode_inbound("M", user_ref_num=1, side="B", quantity=70))) == [("U1", "J")]
    assert v.exchange.book("AAPL").resting_qty() == 70


@pytest.mark.parametrize("change, reason", [
    ({"side": "X"}, 0x09),
    ({"tif": "6"}, 0x0F),
    ({"display": "N"}, 0x03),
    ({"cross_type": "O"}, 0x14),
    ({"qty": 0}, 0x13),
    ({"price": ouch.MAX_PRICE + 1}, 0x1D),
    ({"options": {"firm": "ACC3"}}, 0x0C),
    ({"options": {"min_qty": 5}}, 0x0D),
    ({"symbol": "MSFT"}, 0x17),
])
def test_rejects_carry_the_ouch_reason(change, reason):
    v = Venue({"AAPL": Instrument("AAPL")})
    out = v.enter("U1", 1, change.get("side", "B"), change.get("qty", 10), change.get("price", 1_000_000),
                  tif=change.get("tif", "0"), display=change.get("display", "Y"),
                  cross_type=change.get("cross_type", "N"), options=change.get("options", {}),
                  symbol=change.get("symbol", "AAPL"))
    assert kinds(out) == [("U1", "J")]
    assert (out[0][1]["reason"], out[0][1]["user_ref_num"], out[0][1]["cl_ord_id"]) == (reason, 1, "C1")


def test_the_translator_counts_its_rejects_by_matchwire_reason():
    """Several of matchwire's reasons share OUCH's 0x0F "other": the count by our reason says which (the run's
    summary prints it)."""
    v = Venue({"AAPL": Instrument("AAPL")})
    v.enter("U1", 1, "B", 10, 1_000_000, tif="6")  # invalid time in force: 0x0F
    v.send("U1", encode_inbound("M", user_ref_num=7, side="B", quantity=5))  # unknown order: 0x0F too
    v.enter("U1", 2, "X", 10, 1_000_000)  # invalid side: 0x09
    v.enter("U1", 3, "B", 10, 1_000_000, symbol="MSFT")  # the engine's reject, through on_events
    assert v.tr.rejects == {RejectReason.INVALID_TIF: 1, RejectReason.UNKNOWN_ORDER: 1,
                            RejectReason.INVALID_SIDE: 1, RejectReason.UNKNOWN_SYMBOL: 1}


def test_user_without_accounts_is_rejected():
    v = Venue()
    out = v.enter("U3", 1, "B", 10, 1_000_000)
    assert kinds(out) == [("U3", "J")] and out[0][1]["reason"] == 0x0C


def test_firm_option_picks_the_account():
    v = Venue()
    v.enter("U1", 1, "B", 10, 1_000_000, options={"firm": "ACC2"})
    assert v.commands[0].account == "ACC2"


def test_market_fok_post_only_and_reserve():
    v = Venue()
    out = v.enter("U1", 1, "B", 10, ouch.MARKET_PRICE, tif="0")
    assert kinds(out) == [("U1", "A"), ("U1", "C")]
    assert out[0][1]["price"] == ouch.MARKET_PRICE and out[1][1]["reason"] == "I"
    v.enter("U2", 1, "S", 5, 1_000_000)
    out = v.enter("U1", 2, "B", 10, 1_000_000, tif="3", options={"min_qty": 10})
    assert v.commands[-1].tif == TimeInForce.FOK
    assert kinds(out) == [("U1", "A"), ("U1", "C")] and out[1][1]["quantity"] == 10
    out = v.enter("U1", 3, "B", 10, 1_000_000, display="P")
    assert kinds(out) == [("U1", "A"), ("U1", "C")] and out[1][1]["reason"] == "G"
    v.enter("U1", 4, "B", 100, 900_000, options={"max_floor": 10})
    assert v.commands[-1].display_qty == 10


def test_garbage_is_reported_not_raised():
    v = Venue()
    result = v.tr.on_message("U1", b"O\x00")
    assert result.error is not None and not result.commands and not result.replies


_op = st.one_of(
    st.tuples(st.just("enter"), st.sampled_from(["U1", "U2"]), st.sampled_from("BST"), st.integers(1, 60),
              st.integers(95, 105), st.sampled_from("035"), st.sampled_from("YP"), st.sampled_from([0, 0, 7])),
    st.tuples(st.just("cancel"), st.sampled_from(["U1", "U2"]), st.integers(0, 30), st.integers(0, 70)),
    st.tuples(st.just("replace"), st.sampled_from(["U1", "U2"]), st.integers(0, 30), st.integers(0, 60),
              st.integers(95, 105)),
    st.tuples(st.just("modify"), st.sampled_from(["U1", "U2"]), st.integers(0, 30), st.sampled_from("BST"),
              st.integers(0, 70)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_op, max_size=40))
def test_translator_tracks_the_engine_exactly(ops):
    """Random order flow from two users: every answer decodes, and the translator's view of each live
    order (open quantity, price) is exactly the engine's."""
    v = Venue()
    refs = {"U1": 0, "U2": 0}
    for op in ops:
        _apply(v, refs, op)
        _check_translator_is_the_engine(v)


def _apply(v: Venue, refs: dict[str, int], op: tuple) -> None:
    user = op[1]
    if op[0] == "enter":
        _, _, side, qty, price, tif, display, floor = op
        refs[user] += 1
        v.enter(user, refs[user], side, qty, price * 10_000, tif=tif, display=display,
                options={"max_floor": floor} if floor else {})
    elif op[0] == "cancel":
        v.send(user, encode_inbound("X", user_ref_num=op[2], quantity=op[3]))
    elif op[0] == "replace":
        refs[user] += 1
        v.send(user, encode_inbound("U", orig_user_ref_num=op[2], user_ref_num=refs[user], quantity=op[3],
                                    price=op[4] * 10_000, time_in_force="0", display="Y",
                                    inter_market_sweep_eligibility="N", cl_ord_id=""))
    else:
        v.send(user, encode_inbound("M", user_ref_num=op[2], side=op[3], quantity=op[4]))


def _check_translator_is_the_engine(v: Venue) -> None:
    book = v.exchange.book("AAPL")
    resting = book.orders if book is not None else {}
    live = {oid: o for oid, o in v.tr.by_id.items() if o.leaves > 0}
    assert set(live) == set(resting)
    for oid, order in live.items():
        assert (order.leaves, order.price) == (resting[oid].leaves, resting[oid].price)
        assert not order.pending and v.tr.orders[(order.username, order.user_ref_num)] is order
    assert all(o.leaves > 0 or not o.accepted for o in v.tr.by_id.values())
    assert all(o.accepted and not o.pending for o in v.tr.by_id.values())  # nothing waits, nothing forgotten


def test_requests_sent_before_the_order_is_accepted_reach_the_book_behind_it():
    v = LateVenue()
    assert v.enter("U1", 1, "B", 100, 1_000_000) == []
    assert v.send("U1", encode_inbound("X", user_ref_num=1, quantity=0)) == []  # not a Cancel Reject
    out = v.deliver()
    assert kinds(out) == [("U1", "A"), ("U1", "C")] and out[1][1]["quantity"] == 100
    assert not v.tr.by_id and not v.tr.orders and not v.exchange.book("AAPL").orders

    v.enter("U1", 2, "B", 100, 1_000_000)
    v.send("U1", encode_inbound("X", user_ref_num=2, quantity=30))  # reduce to 30 in all
    v.send("U1", encode_inbound("M", user_ref_num=2, side="B", quantity=20))
    v.send("U1", encode_inbound("U", orig_user_ref_num=2, user_ref_num=3, quantity=10, price=990_000,
                                time_in_force="0", display="Y", inter_market_sweep_eligibility="N", cl_ord_id="R3"))
    out = v.deliver()
    assert kinds(out) == [("U1", "A"), ("U1", "C"), ("U1", "M"), ("U1", "U")]
    assert out[1][1]["quantity"] == 70 and out[2][1]["quantity"] == 20 and out[3][1]["user_ref_num"] == 3
    [(order_id, resting)] = v.exchange.book("AAPL").orders.items()
    assert (resting.leaves, resting.price) == (10, 990_000) and v.tr.orders[("U1", 3)].order_id == order_id


def test_an_ioc_cancelled_before_its_answer_gets_its_own_answer_and_then_a_cancel_reject():
    v = LateVenue()
    v.enter("U2", 1, "S", 50, 1_000_000)
    v.deliver()
    v.enter("U1", 1, "B", 80, 1_000_000, tif="3")  # IOC: 50 trade, 30 cancelled
    v.send("U1", encode_inbound("X", user_ref_num=1, quantity=0))
    out = [(u, m["type"]) for u, m in v.deliver() if u == "U1"]
    assert out == [("U1", "A"), ("U1", "E"), ("U1", "C"), ("U1", "I")]
    assert not v.tr.by_id and not v.tr.orders


def test_requests_behind_a_rejected_order_are_each_answered_once():
    v = LateVenue({"AAPL": Instrument("AAPL", band=(900_000, 1_100_000))})
    v.enter("U1", 1, "B", 100, 1_200_000)  # outside the band: the book rejects it
    v.send("U1", encode_inbound("M", user_ref_num=1, side="B", quantity=50))
    v.send("U1", encode_inbound("U", orig_user_ref_num=1, user_ref_num=2, quantity=10, price=1_000_000,
                                time_in_force="0", display="Y", inter_market_sweep_eligibility="N", cl_ord_id="R2"))
    v.send("U1", encode_inbound("X", user_ref_num=1, quantity=0))
    out = v.deliver()
    assert [(m["type"], m["user_ref_num"]) for _, m in out] == [("J", 1), ("J", 1), ("J", 2), ("I", 1)]
    assert not v.tr.by_id and not v.tr.orders


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_op, st.just(("deliver",))), max_size=40))
def test_translator_tracks_the_engine_exactly_when_answers_come_late(ops):
    """The same random flow with the books answering only now and then: once every answer is in, the translator's
    view is the engine's and nothing waits or stays behind."""
    v = LateVenue()
    refs = {"U1": 0, "U2": 0}
    for op in ops:
        if op[0] == "deliver":
            v.deliver()
        else:
            _apply(v, refs, op)
    v.deliver()
    _check_translator_is_the_engine(v)


def test_a_second_cut_behind_a_first_is_judged_against_what_the_first_leaves():
    v = LateVenue()
    v.enter("U1", 1, "B", 3, 1_000_000)
    assert v.send("U1", encode_inbound("X", user_ref_num=1, quantity=1)) == []  # cut to 1
    assert kinds(v.send("U1", encode_inbound("X", user_ref_num=1, quantity=2))) == [("U1", "I")]  # 2 is no cut
    out = v.deliver()
    assert kinds(out) == [("U1", "A"), ("U1", "C")] and out[1][1]["quantity"] == 2
    [resting] = v.exchange.book("AAPL").orders.values()
    assert resting.leaves == 1 and v.tr.orders[("U1", 1)].leaves == 1


def test_executions_on_their_way_count_against_a_cancels_intended_size():
    """The intended size is worked out at the gateway from the executions it has seen; one still on its way when the
    cancel is sent counts against it all the same: the book cuts what the gateway saw as too many from what it has
    open then (an absolute open quantity made the order grow by the unseen execution)."""
    v = LateVenue()
    v.enter("U1", 1, "S", 100, 1_000_000)
    v.deliver()
    v.enter("U2", 1, "B", 50, 1_000_000)  # executes 50 of U1's order at the book, before U1's cut arrives there
    v.send("U1", encode_inbound("X", user_ref_num=1, quantity=80))  # at most 80 in all: 50 executed, 30 left
    out = [m for u, m in v.deliver() if u == "U1"]
    assert [(m["type"], m["quantity"]) for m in out] == [("E", 50), ("C", 20)]
    [resting] = v.exchange.book("AAPL").orders.values()
    order = v.tr.orders[("U1", 1)]
    assert resting.leaves == order.leaves == 30 and order.executed + order.leaves == 80


def test_a_modify_to_the_size_a_request_in_flight_leaves_changes_nothing_at_the_book():
    """Sent again (or repeated) while the first is unanswered: it is answered in its turn, and the book is not sent an
    absolute quantity, which would have added the execution on its way to the order."""
    v = LateVenue()
    v.enter("U1", 1, "S", 100, 1_000_000)
    v.deliver()
    v.enter("U2", 1, "B", 40, 1_000_000)
    v.send("U1", encode_inbound("M", user_ref_num=1, side="S", quantity=70))
    v.send("U1", encode_inbound("M", user_ref_num=1, side="T", quantity=70))
    out = [m for u, m in v.deliver() if u == "U1"]
    assert [(m["type"], m.get("quantity"), m.get("side")) for m in out] == [("E", 40, None), ("M", 70, "S"),
                                                                           ("M", 70, "T")]
    [resting] = v.exchange.book("AAPL").orders.values()
    assert resting.leaves == 30 and not v.tr.orders[("U1", 1)].pending
    # Before the order's own answer, and behind an order the book refuses: each answered in its turn.
    v.enter("U1", 2, "B", 50, 990_000)
    v.send("U1", encode_inbound("M", user_ref_num=2, side="B", quantity=50))
    assert [m["type"] for u, m in v.deliver() if u == "U1"] == ["A", "M"]
    v.enter("U1", 3, "B", 50, 0)  # price 0: the book refuses the order
    v.send("U1", encode_inbound("M", user_ref_num=3, side="B", quantity=50))
    assert [(m["type"], m["user_ref_num"]) for u, m in v.deliver() if u == "U1"] == [("J", 3), ("J", 3)]
    assert ("U1", 3) not in v.tr.orders


def test_a_cut_that_executions_overtook_ends_the_order():
    v = LateVenue()
    v.enter("U1", 1, "S", 100, 1_000_000)
    v.deliver()
    v.enter("U2", 1, "B", 90, 1_000_000)  # 90 executed at the book, unseen at the gateway
    v.send("U1", encode_inbound("X", user_ref_num=1, quantity=50))  # cut 50 of the 100 it saw: takes the 10 left
    v.send("U1", encode_inbound("X", user_ref_num=1, quantity=0))  # behind it: nothing left to cancel
    out = [m for u, m in v.deliver() if u == "U1"]
    assert [(m["type"], m.get("quantity")) for m in out] == [("E", 90), ("C", 10), ("I", None)]
    assert not v.exchange.book("AAPL").orders and not v.tr.by_id and not v.tr.orders


def test_a_modify_down_counts_executions_on_their_way_too():
    v = LateVenue()
    v.enter("U1", 1, "S", 100, 1_000_000)
    v.deliver()
    v.enter("U2", 1, "B", 40, 1_000_000)
    v.send("U1", encode_inbound("M", user_ref_num=1, side="T", quantity=70))  # at most 70 in all: 30 left
    out = [m for u, m in v.deliver() if u == "U1"]
    assert [m["type"] for m in out] == ["E", "M"] and (out[1]["quantity"], out[1]["side"]) == (70, "T")  # in all
    [resting] = v.exchange.book("AAPL").orders.values()
    assert resting.leaves == 30
    v.enter("U2", 2, "B", 90, 1_000_000)  # executes the 30 the modify kept
    v.send("U1", encode_inbound("M", user_ref_num=1, side="S", quantity=50))  # cuts 20 of 30 seen; none left
    out = [m for u, m in v.deliver() if u == "U1"]
    assert [m["type"] for m in out] == ["E", "J"] and out[0]["quantity"] == 30  # the order had gone: refused
    assert [o.username for o in v.tr.by_id.values()] == ["U2"] and ("U1", 1) not in v.tr.orders
    assert list(v.exchange.book("AAPL").orders) == list(v.tr.by_id)  # U2's rest of 60
