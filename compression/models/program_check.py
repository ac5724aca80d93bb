"""What an exported program may do: built-in tensor operators, nothing that reaches outside.

``torch.export.load`` is less inert than it looks. Deserializing a program parses every
symbolic shape with ``sympy.sympify`` (which evaluates Python), may import a module named in
an input spec (a ``defaultdict`` factory), and ``.module()`` then compiles Python from the
graph: node and argument names, the stored guards and constant string inputs become source
code. So the program's JSON is checked as data before torch sees it (``check_program``), and
the graph torch built is checked again, as objects, before ``.module()`` (``check_graph``).

Operators: ``aten`` and ``prims`` ones, less a deny-list of those that touch files, process
state, autograd or storage sharing; shape arithmetic; and a few vetted control-flow
higher-order operators. Custom operators (any other namespace) are refused: their code is
whatever the process registered under that name.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from compression.errors import InvalidInput

__all__ = ["check_program", "check_graph", "op_problem"]

_NAMESPACES = ("aten", "prims")
_DENIED = frozenset({
    # files and the process
    "aten::from_file", "aten::save", "aten::_print", "aten::warn", "aten::wait",
    "aten::manual_seed", "aten::seed", "aten::set_grad_enabled", "aten::record_stream",
    "aten::_cufft_set_plan_cache_max_size", "aten::_cufft_clear_plan_cache",
    "aten::_propagate_xla_data", "aten::_set_item",
    # autograd side effects
    "aten::backward", "aten::_backward", "aten::retain_grad", "aten::set_data",
    "aten::_unsafe_set_version_counter",
    # a tensor re-pointed at another storage, or built without the checks that keep
    # later kernels inside their memory
    "aten::set_", "aten::_sparse_coo_tensor_with_dims_and_tensors",
    "aten::_nested_view_from_buffer", "aten::_nested_view_from_buffer_copy",
    # effect tokens: only used to order side effects
    "prims::_make_token", "prims::_sink_tokens",
})
_DENIED_PATTERN = re.compile(r"_unsafe$|^_test_")  # unchecked constructors; test-only ops
_HIGHER_ORDER = frozenset({"cond", "while_loop", "map_impl", "scan",
                           "wrap_with_set_grad_enabled", "wrap_with_autocast"})
_SYM_FUNCTIONS = (
    operator.eq, operator.ne, operator.le, operator.ge, operator.lt, operator.gt,
    operator.neg, operator.pos, operator.mul, operator.add, operator.sub, operator.floordiv,
    operator.mod, operator.pow, operator.truediv, operator.and_, operator.or_,
    operator.lshift, operator.rshift, math.trunc, torch.sym_not, torch.sym_int,
    torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min, torch.sym_sqrt)
_SYM_NAMES = frozenset(f"{f.__module__}.{f.__name__}" for f in _SYM_FUNCTIONS)
_OP_TARGET = re.compile(r"torch\.ops\.(\w+)\.(\w+)\.(\w+)")
_HOP_TARGET = re.compile(r"torch\.ops\.higher_order\.(\w+)")
_IDENTIFIER = re.compile(r"([A-Za-z_][A-Za-z0-9_]{0,199})?")  # '': a positional argument
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # a '\r' ends a line of generated code

# shapes are printed by sympy's srepr: Mul(Integer(2), Symbol('s0', positive=True, ...))
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Min", "Max", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "LessThan", "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "true", "false",
    "True", "False", "oo", "zoo", "nan", "floor", "ceiling", "Piecewise", "ExprCondPair",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity"})
_SYMPY_KEYWORDS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "integer",
                             "real", "finite", "infinite", "zero", "nonzero", "precision",
                             "evaluate", "commutative", "extended_real"})
_SYMBOL = re.compile(r"[a-z]{1,8}\d{1,9}")  # s0, u3, zuf0: the names torch gives symbols
_SYMPY_NODES = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword,
                ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Add, ast.Sub, ast.Mult,
                ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.And,
                ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Tuple)
_SAFE_STRING = re.compile(r"[A-Za-z0-9_.+-]{0,64}")
_MAX_EXPR = 4000
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict",
                             "collections.OrderedDict", "torch.Size",
                             "torch.fx.immutable_collections.immutable_dict",
                             "torch.fx.immutable_collections.immutable_list"})
_INPUT_KINDS = frozenset({"as_tensor", "as_sym_int", "as_int", "as_float", "as_bool",
                          "as_none"})  # a string input would become generated source
_IDENTIFIER_KEYS = frozenset({"name", "as_name", "user_input_name", "forward_arg_names",
                              "field_names"})
_DOTTED_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name", "fqn"})
_SEGMENT = re.compile(r"[\w@-]{1,200}")
_TYPED_KEYS = {"as_int": int, "as_ints": int, "as_bool": bool, "as_bools": bool,
               "min_val": (int, type(None)), "max_val": (int, type(None))}
_SHOW = 8


def op_problem(namespace: str, name: str) -> str | None:
    """Why the operator ``namespace::name`` may not run in a teacher; None when it may."""
    if namespace not in _NAMESPACES:
        return (f"custom operator {namespace}::{name} (namespace {namespace!r}): only built-in "
                f"{' and '.join(_NAMESPACES)} operators are allowed, since a custom operator "
                "runs whatever code registered it")
    if f"{namespace}::{name}" in _DENIED or _DENIED_PATTERN.search(name):
        return (f"operator {namespace}::{name} touches files, process state or memory "
                "outside its tensors")
    return None


def _target_problem(target: str) -> str | None:
    if target in _SYM_NAMES:
        return None
    hop = _HOP_TARGET.fullmatch(target)
    if hop:
        return None if hop.group(1) in _HIGHER_ORDER else (
            f"higher-order operator {hop.group(1)} is not one of the vetted "
            f"{', '.join(sorted(_HIGHER_ORDER))}")
    op = _OP_TARGET.fullmatch(target)
    if op:
        return op_problem(op.group(1), op.group(2))
    return f"call target {target[:80]!r} is not a torch operator"


def _expr_problem(text: str) -> str | None:
    """Why a symbolic-shape expression is not plain sympy arithmetic (it will be eval-ed)."""
    if len(text) > _MAX_EXPR:
        return f"a shape expression of {len(text)} characters"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return f"shape expression {text[:80]!r} is not an expression"
    for node in ast.walk(tree):
        bad = None
        if not isinstance(node, _SYMPY_NODES):
            bad = type(node).__name__
        elif isinstance(node, ast.Name) and not (node.id in _SYMPY_NAMES or
                                                  _SYMBOL.fullmatch(node.id)):
            bad = f"name {node.id!r}"
        elif isinstance(node, ast.keyword) and node.arg not in _SYMPY_KEYWORDS:
            bad = f"keyword {node.arg!r}"
        elif isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            bad = "a call of a computed function"
        elif isinstance(node, ast.Constant) and not _constant_ok(node.value):
            bad = f"constant {str(node.value)[:40]!r}"
        elif _huge_power(node):
            bad = "a power other than a small integer one"
        if bad:
            return f"shape expression {text[:80]!r} holds {bad}"
    return None


def _huge_power(node: ast.AST) -> bool:
    """A power whose evaluation could take unbounded time (the exponent is not a small int)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        exponent = node.right
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
            "Pow", "PowByNatural", "FloatPow") and len(node.args) == 2:
        exponent = node.args[1]
    else:
        return False
    if isinstance(exponent, ast.Call) and isinstance(exponent.func, ast.Name) and \
            exponent.func.id == "Integer" and len(exponent.args) == 1:
        exponent = exponent.args[0]
    if isinstance(exponent, ast.Constant):
        return not (type(exponent.value) is int and abs(exponent.value) <= 64)
    return not isinstance(exponent, (ast.Name, ast.Call))  # symbolic: nothing to evaluate


def _constant_ok(value: Any) -> bool:
    if isinstance(value, str):
        return _SAFE_STRING.fullmatch(value) is not None
    if isinstance(value, int):  # bool included
        return abs(value) < 2**63
    return isinstance(value, float) or value is None


def _treespec_problem(text: str) -> str | None:
    try:
        _, root = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return "an input/output spec that is not a pytree spec"
    stack = [root]
    while stack:
        spec = stack.pop()
        if not isinstance(spec, dict) or not isinstance(spec.get("children_spec", []), list):
            return "an input/output spec that is not a pytree spec"
        if spec.get("type") not in _TREESPEC_TYPES:
            # a defaultdict spec names a module that deserializing imports
            return (f"inputs or outputs of type {str(spec.get('type'))[:60]!r}; a teacher "
                    "takes tensors in tuples, lists or dicts")
        if "dict" in str(spec.get("type")) and not _keys_ok(spec.get("context")):
            # dict keys end up inside the source of the generated input guards
            return "input or output dict keys that are not plain identifiers"
        stack.extend(spec.get("children_spec", []))
    return None


def _keys_ok(context: Any) -> bool:
    try:
        keys = json.loads(context)
    except (ValueError, TypeError, RecursionError):
        return False
    return isinstance(keys, list) and all(
        isinstance(k, int) or (isinstance(k, str) and _IDENTIFIER.fullmatch(k)) for k in keys)


def _walk(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(key, value) for every value in the JSON ``obj``, the key being where it hangs."""
    stack = [(key, obj)]
    while stack:
        key, value = stack.pop()
        yield key, value
        if isinstance(value, dict):
            stack.extend((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)


def _dotted_ok(name: Any) -> bool:
    """A module attribute path ('' is the root). FX writes a segment that is not an
    identifier into generated source inside double quotes, unescaped: no quotes, no dunders."""
    if not isinstance(name, str):
        return False
    parts = name.split(".") if name else []
    return all(_SEGMENT.fullmatch(p) and not (p.startswith("__") and p.endswith("__"))
               for p in parts)


def _named_problem(key: str, value: Any) -> str | None:
    """Rules for names and typed scalars, which torch does not check and which reach code."""
    if key in _IDENTIFIER_KEYS and value is not None and not (
            isinstance(value, str) and _IDENTIFIER.fullmatch(value)):
        return f"{key} {str(value)[:60]!r} is not a plain identifier"
    if key in _DOTTED_KEYS and not _dotted_ok(value):
        return f"{key} {str(value)[:60]!r} is not a module attribute path"
    if key in _TYPED_KEYS and not isinstance(value, _TYPED_KEYS[key]):
        # e.g. a string stored as an int input becomes a guard's source code
        return f"{key} {str(value)[:60]!r} is not of type {_TYPED_KEYS[key]}"
    return None


def _value_problem(key: str, value: Any) -> str | None:
    """The rule for one JSON value, chosen by the key it hangs under (a list's items are
    walked with the list's key, so a list itself only answers to the emptiness rules)."""
    if key in ("guards_code", "custom_obj_values", "treespec_namedtuple_fields") and value:
        return f"{key} is not empty (it would be run as code, or names Python classes)"
    if isinstance(value, list):
        return None
    if isinstance(value, str) and _CONTROL.search(value):
        return f"{key} {value[:60]!r} holds control characters"
    if key == "nodes" and isinstance(value, dict):
        return _target_problem(str(value.get("target")))
    if key == "as_operator":
        return _target_problem(str(value))
    if key == "expr_str":
        return _expr_problem(str(value))
    if key in ("in_spec", "out_spec"):
        return _treespec_problem(str(value))
    if key in ("as_custom_obj", "class_fqn", "custom_obj_name", "token"):
        return "a custom class object (TorchBind) or effect token"
    if key == "inputs" and isinstance(value, dict) and len(value) == 1 and \
            next(iter(value)) not in _INPUT_KINDS:
        return f"a graph input of kind {next(iter(value))!r}"
    return _named_problem(key, value)


def check_program(program: Any, path: Path, member: str) -> None:
    """Refuse a serialized program (``models/model.json``, parsed) that is not plain data
    for built-in operators; every problem found is listed, none of it run."""
    if not isinstance(program, dict) or "graph_module" not in program:
        raise InvalidInput(f"{path}: {member} is not a serialized exported program")
    problems: list[str] = []
    for key, value in _walk(program):
        found = _value_problem(key, value)
        if found and found not in problems:
            problems.append(found)
            if len(problems) == _SHOW:  # enough to act on; a hostile file may hold millions
                break
    if problems:
        raise InvalidInput(problems, f"{path} holds a program that is not loaded")


def _graph_modules(root: torch.nn.Module) -> Iterator[torch.fx.GraphModule]:
    for module in root.modules():
        if isinstance(module, torch.fx.GraphModule):
            yield module


def _node_problem(node: torch.fx.Node) -> str | None:
    if node.op in ("placeholder", "output", "get_attr"):
        return None
    if node.op != "call_function":
        return f"a {node.op} node ({node.name})"
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return op_problem(target.namespace, target._schema.name.split("::", 1)[-1])
    if isinstance(target, torch._ops.HigherOrderOperator):
        return None if target.name() in _HIGHER_ORDER else (
            f"higher-order operator {target.name()} is not vetted")
    if target in _SYM_FUNCTIONS or target is operator.getitem:
        return None
    return f"call of {getattr(target, '__qualname__', type(target).__name__)} ({node.name})"


def check_graph(program: torch.export.ExportedProgram, path: Path) -> None:
    """Check the loaded graph (and every subgraph) as objects, before anything runs."""
    problems: list[str] = []
    for module in _graph_modules(program.graph_module):
        for node in module.graph.nodes:
            found = _node_problem(node)
            if found and found not in problems:
                problems.append(found)
    if problems:
        raise InvalidInput(problems[:_SHOW], f"{path} holds a program that is not run")
