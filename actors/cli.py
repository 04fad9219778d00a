"""The ``matchwire`` command line: one thin verb per capability."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from actors.backends import BackendOptions, BackendUnavailable, book_factory
from exchange.engine import Exchange
from exchange.instruments import load_instruments
from exchange.orders import Cancelled, Fill, Rejected
from exchange.replay import bench, load_script, replay, replay_to_jsonl


def _read_lines(path: str) -> list[str]:
    if path == "-":
        return sys.stdin.read().splitlines()
    return Path(path).read_text().splitlines()


def cmd_match(args: argparse.Namespace) -> int:
    """Replay a command script through one book per symbol and print the events as JSON lines."""
    try:
        instruments = load_instruments(args.instruments) if args.instruments else None
        lines = _read_lines(args.script)
    except (OSError, ValueError) as exc:
        print(f"matchwire match: {exc}", file=sys.stderr)
        return 2
    commands = load_script(lines, sys.stderr, source=args.script)
    options = BackendOptions(simulator=args.simulator, link=args.link)
    try:
        factory = book_factory(args.backend, options)
    except BackendUnavailable as exc:
        print(f"matchwire match: {exc}", file=sys.stderr)
        return 2

    def make_exchange() -> Exchange:
        return Exchange(instruments, book_factory=factory)

    if args.bench:
        if not commands:
            print("matchwire match: nothing to time: the script holds no commands", file=sys.stderr)
            return 2
        result = bench(commands, make_exchange, min_seconds=args.min_seconds)
        print(f"backend={args.backend} messages={result['messages']} rounds={result['rounds']} "
              f"events_per_msg={result['events_per_msg']:.3f} ns_per_msg={result['ns_per_msg']:.1f} "
              f"msgs_per_s={result['msgs_per_s']:.1f}")
        if args.backend == "sim":
            # Simulated clock cycles of the gateware matcher (the wall time above is the simulator's).
            from sim.matcher_backend import bench_report

            print(bench_report(factory))
        return 0
    out = sys.stdout
    try:
        replay_to_jsonl(commands, make_exchange(), out)
    except BackendUnavailable as exc:  # e.g. a card that does not answer, or a second symbol on one card
        print(f"matchwire match: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a card that failed a command (host.card.CardError) stops the replay
        if args.backend == "software":
            raise
        print(f"matchwire match: {exc}", file=sys.stderr)
        return 1
    out.flush()
    return 0



def cmd_card(args: argparse.Namespace) -> int:
    """The card: ``sim`` serves a simulated card on a TCP port until interrupted."""
    from sim.card_sim import serve

    try:
        return serve(port=args.port, host=args.host, simulator=args.simulator, preset=args.matcher,
                     design=args.design, announce=lambda line: print(line, flush=True))
    except (ValueError, RuntimeError, AssertionError) as exc:
        print(f"matchwire card sim: {exc}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay the bundled demo scenario and print the trades and the resulting books."""
    text = resources.files("exchange").joinpath("data/demo.jsonl").read_text()
    commands = load_script(text.splitlines(), sys.stderr, source="demo.jsonl")
    exchange = Exchange()
    trades: list[Fill] = []
    outcomes: dict[str, int] = {}

    def collect(event: object) -> None:
        if isinstance(event, Fill):
            trades.append(event)
        if isinstance(event, (Cancelled, Rejected)):
            outcomes[f"{event.kind}:{event.reason}"] = outcomes.get(f"{event.kind}:{event.reason}", 0) + 1

    events = replay(commands, exchange, collect)
    print(f"matchwire demo: {len(commands)} commands -> {events} events, {len(trades)} trades\n")
    print("Trades (price in dollars, 4 implied decimals on the wire)")
    print(f"  {'#':>3} {'symbol':<6} {'qty':>6} {'price':>10}  {'buyer':<8} {'seller':<8} aggressor")
    for fill in trades:
        buyer, seller = ((fill.taker_account, fill.maker_account) if fill.taker_side.name == "BUY"
                         else (fill.maker_account, fill.taker_account))
        print(f"  {fill.match_number:>3} {fill.symbol:<6} {fill.qty:>6} {fill.price / 10_000:>10.2f}  "
              f"{buyer:<8} {seller:<8} {fill.taker_side.name.lower()}")
    print("\nCancels and rejects: " + ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items())))
    for symbol, book in exchange.books.items():
        depth = book.depth(5)
        print(f"\nBook {symbol} (top 5 levels)")
        print(f"  {'bid qty':>8} {'bid':>9} | {'ask':<9} {'ask qty':<8}")
        for i in range(max(len(depth["bids"]), len(depth["asks"]), 1)):
            bid = depth["bids"][i] if i < len(depth["bids"]) else None
            ask = depth["asks"][i] if i < len(depth["asks"]) else None
            left = f"{bid[1]:>8} {bid[0] / 10_000:>9.2f}" if bid else f"{'':>8} {'':>9}"
            right = f"{ask[0] / 10_000:<9.2f} {ask[1]:<8}" if ask else ""
            print(f"  {left} | {right}")
    return 0


def cmd_itch(args: argparse.Namespace) -> int:
    """ITCH 5.0 file tools: decode to JSON lines, rebuild the book, count messages."""
    from exchange import itch_tools

    if args.backend == "sim":
        # The gateware decoder (hdl.itch) simulated on Icarus or Verilator; see docs/itch-hdl.md.
        if args.action != "decode":
            print("matchwire itch: --backend sim supports 'decode' only", file=sys.stderr)
            return 2
        from sim.itch_backend import cmd_decode as sim_decode
        from sim.runner import simulator_available

        if not simulator_available(args.simulator):
            print(f"matchwire itch: simulator {args.simulator!r} is not available", file=sys.stderr)
            return 2
        return sim_decode(args.file, sys.stdout, sys.stderr, simulator=args.simulator)
    if args.backend != "software":
        print(f"matchwire itch: backend {args.backend!r} is not available; use 'software' or 'sim'",
              file=sys.stderr)
        return 2
    if args.action == "decode":
        return itch_tools.cmd_decode(args.file, sys.stdout, sys.stderr)
    if args.action == "book":
        return itch_tools.cmd_book(args.file, symbol=args.symbol, depth=args.depth, out=sys.stdout, err=sys.stderr)
    return itch_tools.cmd_stats(args.file, sys.stdout, sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Start a local cluster, demo traders and a live view; summarise at the end."""
    from actors.cluster import run_cluster
    from actors.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"matchwire run: {exc}", file=sys.stderr)
        return 2
    return run_cluster(config, args.config, args.duration, not args.no_demo,
                       restart=False if args.no_restart else None)


def cmd_node(args: argparse.Namespace) -> int:
    """Run one node process."""
    from actors.node import main as node_main

    return node_main(args.config, args.name, args.control, args.parent, args.state_dir)


def cmd_admin(args: argparse.Namespace) -> int:
    """Operator requests to a running cluster: kill switch, release, limits, positions."""
    import json

    from actors.admin import AdminError, kill_and_wait, risk_request
    from actors.config import ConfigError, load_config

    try:
        config = load_config(args.config)
        if args.action == "kill":
            answer = kill_and_wait(config, args.account, timeout=args.timeout)
        else:
            answer = risk_request(config, args.account, args.action, timeout=args.timeout)
    except (ConfigError, AdminError) as exc:
        print(f"matchwire admin: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2, sort_keys=True))
    if "error" in answer:
        return 1
    return 0 if answer.get("effective", True) else 1


def cmd_journal(args: argparse.Namespace) -> int:
    """Inspect or replay a book's journal directory."""
    from actors import journal_cli

    if args.action == "inspect":
        return journal_cli.inspect(args.path)
    return journal_cli.replay(args.path, depth=args.depth)


def cmd_top(args: argparse.Namespace) -> int:
    """A live terminal view of a running cluster (or one frame with --once)."""
    from actors.config import ConfigError, load_config
    from actors.top import TopView, run_top

    try:
        config = load_config(args.config)
        TopView(config, args.interval, args.symbols, args.ladders)  # the options' checks, before connecting
    except (ConfigError, ValueError) as exc:
        print(f"matchwire top: {exc}", file=sys.stderr)
        return 2
    return run_top(config, args.interval, args.once, symbols=args.symbols, ladders=args.ladders)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run every benchmark and write the report (JSON, Markdown, plots)."""
    from actors.report import main as report_main

    argv = ["--out", args.out] + (["--quick"] if args.quick else []) + (["--only", args.only] if args.only else [])
    return report_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matchwire", description="An exchange built from actors, "
                                     "with its matching and feed decoding in Python and in FPGA gateware.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    match = verbs.add_parser("match", help="replay a JSONL command script and print the events")
    match.add_argument("script", help="JSON-lines command script ('-' for standard input)")
    match.add_argument("--instruments", metavar="FILE", help="TOML file of [[instrument]] tables")
    match.add_argument("--backend", default="software",
                       help="matcher behind each book: software, card (with --link), ... (default: software)")
    match.add_argument("--simulator", default="icarus", choices=["icarus", "verilator"],
                       help="HDL simulator for --backend sim")
    match.add_argument("--link", metavar="URL", help="card link for --backend card (pyserial URL)")
    match.add_argument("--bench", action="store_true", help="time the engine alone over the script")
    match.add_argument("--min-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    match.set_defaults(func=cmd_match)

    card = verbs.add_parser("card", help="the FPGA card: serve a simulated one (see docs/card.md)")
    card_verbs = card.add_subparsers(dest="action", required=True, metavar="ACTION")
    card_sim = card_verbs.add_parser("sim", help="run the card top under cocotb and serve its link on a TCP port")
    card_sim.add_argument("--port", type=int, default=0, help="TCP port (default: any free one; the URL is printed)")
    card_sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    card_sim.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"],
                          help="HDL simulator (default verilator)")
    card_sim.add_argument("--matcher", default="default", choices=["default", "medium", "small"],
                          help="matcher size: default (as on the ULX3S-85F), medium (iCESugar-Pro) or small")
    card_sim.add_argument("--design", default="matcher", choices=["matcher", "itch"],
                          help="card design: matcher (default) or itch (the ITCH 5.0 decoder card, feed decoder "
                               "'card'; see docs/itch-hdl.md)")
    card_sim.set_defaults(func=cmd_card)

    itch = verbs.add_parser("itch", help="ITCH 5.0 file tools (plain or gzip)")
    itch_verbs = itch.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("decode", "print one JSON object per message"),
                         ("book", "print the book at the end of the file"),
                         ("stats", "count messages by type")):
        sub = itch_verbs.add_parser(action, help=text)
        sub.add_argument("file", help="ITCH 5.0 file: 2-byte big-endian length before each message")
        sub.add_argument("--backend", default="software", help="decoder: software (default) or sim (gateware)")
        sub.add_argument("--simulator", default="icarus", choices=["icarus", "verilator"],
                         help="HDL simulator for --backend sim")
        if action == "book":
            sub.add_argument("--symbol", help="only this symbol")
            sub.add_argument("--depth", type=int, default=5, help="price levels per side (default 5)")
        sub.set_defaults(func=cmd_itch)

    admin = verbs.add_parser("admin", help="operator requests to a running cluster")
    admin.add_argument("action", choices=["kill", "release", "limits", "positions"],
                       help="kill: refuse the account's new orders and cancel its open ones; release: undo; "
                            "limits / positions: show them")
    admin.add_argument("account", help="the account")
    admin.add_argument("--config", metavar="FILE", help="the cluster's configuration (default: embedded)")
    admin.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for answers")
    admin.set_defaults(func=cmd_admin)

    journal = verbs.add_parser("journal", help="look into a book's journal directory")
    journal_verbs = journal.add_subparsers(dest="action", required=True, metavar="ACTION")
    inspect_verb = journal_verbs.add_parser("inspect", help="records, sequence range, last snapshot, damage")
    inspect_verb.add_argument("path", help="journal directory (state_dir/NODE/book-SYMBOL)")
    inspect_verb.set_defaults(func=cmd_journal)
    replay_verb = journal_verbs.add_parser("replay", help="rebuild the book and print it")
    replay_verb.add_argument("path", help="journal directory (state_dir/NODE/book-SYMBOL)")
    replay_verb.add_argument("--depth", type=int, default=10, help="price levels per side")
    replay_verb.set_defaults(func=cmd_journal)

    demo = verbs.add_parser("demo", help="replay the bundled demo scenario and show trades and books")
    demo.set_defaults(func=cmd_demo)

    run = verbs.add_parser("run", help="run a local cluster (the embedded default unless --config)")
    run.add_argument("--config", metavar="FILE", help="cluster configuration (TOML)")
    run.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    run.add_argument("--no-demo", action="store_true", help="start no demo traders")
    run.add_argument("--no-restart", action="store_true",
                     help="leave a node that dies dead (default: started again when journals are on)")
    run.set_defaults(func=cmd_run)

    node = verbs.add_parser("node", help="run one node of a cluster (for spreading a cluster over hosts)")
    node.add_argument("--config", metavar="FILE", help="cluster configuration (TOML; default: embedded)")
    node.add_argument("--name", required=True, help="which [[node]] of the configuration to run")
    node.add_argument("--control", metavar="ENDPOINT", help="launcher's control endpoint (set by matchwire run)")
    node.add_argument("--parent", type=int, metavar="PID", help="exit when this process (the launcher) exits")
    node.add_argument("--state-dir", metavar="DIR", help="journal directory when the configuration sets none")
    node.set_defaults(func=cmd_node)

    top = verbs.add_parser("top", help="live terminal view of a running cluster: ladders, trades, node health")
    top.add_argument("--config", metavar="FILE", help="the cluster's configuration (default: embedded)")
    top.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between frames")
    top.add_argument("--once", action="store_true",
                     help="print one frame (two samples one interval apart) and exit; 1 if a node is down")
    top.add_argument("--symbols", type=lambda text: [s for s in text.split(",") if s], metavar="S1,S2",
                     help="the instruments that get a ladder (default: the most traded, if not all fit)")
    top.add_argument("--ladders", type=int, metavar="N",
                     help="how many ladders without --symbols (default: actors.top.LADDERS, 12)")
    top.set_defaults(func=cmd_top)

    bench = verbs.add_parser("bench", help="run every benchmark; write bench/report.json, report.md and plots")
    bench.add_argument("--quick", action="store_true", help="small counts, one short rate each (under 2 minutes)")
    bench.add_argument("--out", metavar="DIR", default="bench", help="where the report goes (default: bench)")
    bench.add_argument("--only", metavar="SECTIONS", help="comma list of engine, pipeline, cluster, itch, gateware")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
