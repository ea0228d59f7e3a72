"""`scheduler.lr_lambda` as an arithmetic expression ("0.95 ** epoch", "min(1.0, (step + 1) / 100)").

The text is parsed with `ast.parse(mode="eval")` and turned, node by node, into nested Python
closures; nothing of the user's text is ever passed to eval/exec/compile. Allowed: numbers,
+ - * / // % ** and unary + -, comparisons, `and`/`or`/`not`, `x if c else y`, calls of min, max,
abs and the math module's functions (`math.cos(...)` or bare `cos(...)`), the constants pi, e, tau,
inf (bare or as `math.pi`), and one variable: `epoch` when scheduler.interval = "epoch", `step` when
it is "step" (the scheduler's own counter: LambdaLR passes its `last_epoch`).

The compiled rule is a plain function (a closure): LambdaLR.state_dict() stores the `__dict__` of
callables that are not functions, which would put the tree into checkpoints.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from tui_trainer.errors import PresetError, did_you_mean
from tui_trainer.parts import target

_FUNCTIONS: dict[str, Callable] = {n: getattr(math, n) for n in dir(math)
                                   if not n.startswith("_") and callable(getattr(math, n))}
_BUILTINS: dict[str, Callable] = {"min": min, "max": max, "abs": abs}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}
_VARIABLES = {"epoch": "the scheduler steps per epoch", "step": "the scheduler's own step count"}


def is_expression(spec: object) -> bool:
    """A string that is not a "package.module:function" path (a path has a ":" and no spaces)."""
    return isinstance(spec, str) and not (target.is_target(spec) and not any(c.isspace() for c in spec))


def variable_for(interval: str) -> str:
    return "step" if interval == "step" else "epoch"


def _pow(a, b):
    if a == 0 and b < 0:
        raise ZeroDivisionError("0 to a negative power")
    return math.pow(a, b)  # a float: no 10 ** 10 ** 10 integer to compute, no complex from (-1) ** 0.5


def _mod(a, b):
    return a % b


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: _mod, ast.Pow: _pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_WHAT = {ast.Subscript: "indexing", ast.Lambda: "a lambda", ast.List: "a list", ast.Tuple: "a tuple",
         ast.Dict: "a dict", ast.Set: "a set", ast.ListComp: "a comprehension", ast.GeneratorExp: "a generator",
         ast.NamedExpr: "an assignment", ast.JoinedStr: "an f-string", ast.Starred: "*",
         ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>",
         ast.MatMult: "@", ast.Invert: "~", ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}


class _Compiler:
    def __init__(self, text: str, interval: str, key: str):
        self.text, self.key = text, key
        self.var = variable_for(interval)
        self.interval = interval

    # -- errors

    def help(self) -> str:
        return (f"an lr_lambda expression may use {self.var} ({_VARIABLES[self.var]}), numbers,"
                f" + - * / ** and min, max, math functions")

    def fail(self, message: str) -> PresetError:
        return PresetError(f'"{self.text}": {message}', key=self.key)

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or type(node).__name__

    def not_allowed(self, node: ast.AST, what: str | None = None) -> PresetError:
        what = what or _WHAT.get(type(node)) or type(node).__name__
        return self.fail(f'{self.segment(node)} ({what}) is not allowed; {self.help()}')

    def unknown(self, name: str, choices) -> PresetError:
        if name in _VARIABLES:  # the other variable
            hint = f' ({_VARIABLES[self.var]}), or set interval = "{name}"' if self.var == "step" else ""
            return self.fail(f'uses {name} but scheduler.interval = "{self.interval}"; use {self.var}{hint}')
        return self.fail(f'unknown name "{name}"{did_you_mean(name, choices)}; {self.help()}')

    # -- nodes

    def compile(self, node: ast.AST) -> Callable:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.not_allowed(node)
        return method(node)

    def _Constant(self, node: ast.Constant):
        value = node.value
        if type(value) not in (int, float):
            kind = "a string" if isinstance(value, str) else type(value).__name__
            raise self.not_allowed(node, kind)
        return lambda x: value

    def _Name(self, node: ast.Name):
        name = node.id
        if name == self.var:
            return lambda x: x
        if name in _CONSTANTS:
            value = _CONSTANTS[name]
            return lambda x: value
        if name in _FUNCTIONS or name in _BUILTINS:
            raise self.fail(f"{name} is a function; call it, e.g. {name}({self.var})")
        raise self.unknown(name, [self.var, *_CONSTANTS, *_BUILTINS, *_FUNCTIONS])

    def _Attribute(self, node: ast.Attribute):
        if not (isinstance(node.value, ast.Name) and node.value.id == "math"):
            raise self.fail(f"{self.segment(node)}: only math.<name> may be written with a dot; {self.help()}")
        if node.attr in _CONSTANTS:
            value = _CONSTANTS[node.attr]
            return lambda x: value
        if node.attr in _FUNCTIONS:
            raise self.fail(f"math.{node.attr} is a function; call it, e.g. math.{node.attr}({self.var})")
        choices = [*_CONSTANTS, *_FUNCTIONS]
        raise self.fail(f'unknown name "math.{node.attr}"{did_you_mean(node.attr, choices)}; {self.help()}')

    def _BinOp(self, node: ast.BinOp):
        op = _BINARY.get(type(node.op))
        if op is None:
            raise self.not_allowed(node, _WHAT.get(type(node.op)))
        left, right = self.compile(node.left), self.compile(node.right)
        return lambda x: op(left(x), right(x))

    def _UnaryOp(self, node: ast.UnaryOp):
        op = _UNARY.get(type(node.op))
        if op is None:
            raise self.not_allowed(node, _WHAT.get(type(node.op)))
        operand = self.compile(node.operand)
        return lambda x: op(operand(x))

    def _Compare(self, node: ast.Compare):
        ops = []
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise self.not_allowed(node, _WHAT.get(type(op)))
            ops.append(_COMPARE[type(op)])
        first = self.compile(node.left)
        rest = [self.compile(c) for c in node.comparators]

        def compare(x):
            left = first(x)
            for op, right_fn in zip(ops, rest):
                right = right_fn(x)
                if not op(left, right):
                    return False
                left = right
            return True

        return compare

    def _BoolOp(self, node: ast.BoolOp):
        values = [self.compile(v) for v in node.values]
        if isinstance(node.op, ast.And):
            def both(x):
                result = True
                for v in values:
                    result = v(x)
                    if not result:
                        return result
                return result
            return both

        def either(x):
            result = False
            for v in values:
                result = v(x)
                if result:
                    return result
            return result
        return either

    def _IfExp(self, node: ast.IfExp):
        test, body, orelse = self.compile(node.test), self.compile(node.body), self.compile(node.orelse)
        return lambda x: body(x) if test(x) else orelse(x)

    def _Call(self, node: ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and (func.id in _BUILTINS or func.id in _FUNCTIONS):
            fn = _BUILTINS.get(func.id) or _FUNCTIONS[func.id]
        elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math"
              and func.attr in _FUNCTIONS):
            fn = _FUNCTIONS[func.attr]
        elif isinstance(func, ast.Name):
            raise self.unknown(func.id, [*_BUILTINS, *_FUNCTIONS])
        elif isinstance(func, ast.Attribute):
            self._Attribute(func)  # raises: unknown math.<name>, or not math at all
            raise self.fail(f"{self.segment(func)} is not a function; {self.help()}")
        else:
            raise self.fail(f"{self.segment(node)}: only min, max, abs and math functions can be called; {self.help()}")
        if node.keywords:
            raise self.not_allowed(node, "keyword arguments")
        args = [self.compile(a) for a in node.args]
        return lambda x: fn(*(a(x) for a in args))


def compile_rule(text: str, interval: str, key: str = "scheduler.lr_lambda") -> Callable[[int], float]:
    """The expression as a function of the scheduler's counter, checked by evaluating it at 0.

    Raises PresetError (one line, `key`) for anything not allowed, a syntax error, or a value at 0
    that is not a finite number (division by zero included). Later values that fail raise
    PresetError too, naming the epoch/step."""
    stripped = text.strip()
    if not stripped:
        raise PresetError('is empty; give an expression such as "0.95 ** epoch"', key=key)
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise PresetError(f'"{stripped}": syntax error{where}: {exc.msg}', key=key) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; absurd nesting
        raise PresetError(f'"{stripped[:60]}" cannot be parsed: {type(exc).__name__}', key=key) from None
    compiler = _Compiler(stripped, interval, key)
    try:
        body = compiler.compile(tree.body)
    except RecursionError:
        raise PresetError(f'"{stripped[:60]}" is nested too deeply', key=key) from None
    var = compiler.var

    def rule(counter: int) -> float:
        try:
            value = body(counter)
        except ZeroDivisionError:
            raise PresetError(f'"{stripped}" divides by zero at {var} = {counter}'
                              + (f"; e.g. write ({var} + 1)" if counter == 0 else ""), key=key) from None
        except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:
            raise PresetError(f'"{stripped}" at {var} = {counter}: {type(exc).__name__}: {exc}', key=key) from None
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PresetError(f'"{stripped}" at {var} = {counter} gives {value!r}, not a finite number', key=key)
        return float(value)

    rule.__name__ = rule.__qualname__ = "lr_lambda"
    rule.__doc__ = stripped
    rule(0)
    return rule


def check_rule(text: str, interval: str, key: str = "scheduler.lr_lambda") -> None:
    compile_rule(text, interval, key)
