"""Read-only SQL on Spark: what an analyst's statement may do, decided from its plan.

``SparkSession.sql()`` runs commands (DDL, DML, ``SET``) eagerly, as soon as it is called, so a
statement is judged before that call: ``refusal`` walks its parsed plan (nothing has run yet)
and names the first node that would change something. The same walk runs inside Spark as an
analyzer check rule (``install_check_rule``) for sessions the JDBC server opens, where the
statement text never passes through Python: the check runs after analysis and before a
command executes, so a refused ``DROP``/``INSERT`` has touched nothing.

Allowed: queries (``SELECT``, ``WITH``, ``VALUES``), the catalog's read commands (``DESCRIBE``,
``SHOW``, ``EXPLAIN`` of an allowed plan), ``USE``, ``SET`` that reads a setting or changes a
runtime SQL setting that names no catalog, warehouse or metastore, and temporary views (they
live and die with the connection's session). Everything else, including ``CACHE TABLE``, is
refused, as are ``TRANSFORM ... USING`` (runs a shell command) and ``reflect``/``java_method``
(call JVM methods).
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("hybridrec.sql")

RULE = "analyst SQL is read-only"

_COMMAND = "org.apache.spark.sql.catalyst.plans.logical.Command"

# Commands that read the catalog or the session, as the parser writes them and as the analyzer
# rewrites them for the session catalog (the JDBC check sees the analyzed form).
READ_COMMANDS = frozenset(
    {
        "DescribeRelation",
        "DescribeColumn",
        "DescribeNamespace",
        "DescribeFunction",
        "DescribeTableCommand",
        "DescribeColumnCommand",
        "DescribeDatabaseCommand",
        "DescribeFunctionCommand",
        "DescribeQueryCommand",
        "ShowTables",
        "ShowTablesCommand",
        "ShowTableExtended",
        "ShowViews",
        "ShowViewsCommand",
        "ShowColumns",
        "ShowColumnsCommand",
        "ShowCreateTable",
        "ShowCreateTableCommand",
        "ShowPartitions",
        "ShowPartitionsCommand",
        "ShowTableProperties",
        "ShowTablePropertiesCommand",
        "ShowFunctions",
        "ShowFunctionsCommand",
        "ShowNamespaces",
        "ShowNamespacesCommand",
        "ShowCatalogsCommand",
        "ShowCurrentNamespaceCommand",
        "ShowCurrentNamespace",
        "ExplainCommand",
        "SetCatalogAndNamespace",
        "SetNamespaceCommand",
        "SetCatalogCommand",
        "SetCommand",
        "CreateViewCommand",
    }
)
# Plan nodes that write or execute without being commands.
WRITING_NODES = frozenset({"InsertIntoStatement", "InsertIntoDir", "ScriptTransformation"})
REFLECTION = frozenset({"reflect", "java_method", "try_reflect"})
REFLECTION_EXPRESSIONS = frozenset({"CallMethodViaReflection"})
# A SET that changes one of these would point the session at other tables or files.
_PROTECTED_SETTING = re.compile(r"catalog|warehouse|metastore|extension|jdo|datanucleus|derby")


class ReadOnlyError(RuntimeError):
    """A statement that would change the pipeline's catalog, tables or files."""


def refusal(plan, gateway) -> str | None:
    """Why ``plan`` (a JVM LogicalPlan, parsed or analyzed) may not run; None when it may."""
    from py4j.java_gateway import is_instance_of

    pending = [plan]
    while pending:
        node = pending.pop()
        name = _simple_name(node)
        if name in WRITING_NODES:
            return f"{name} writes or runs a program"
        if is_instance_of(gateway, node, _COMMAND):
            why = _command_refusal(node, name)
            if why:
                return why
            if name == "ExplainCommand":
                pending.append(node.logicalPlan())
        why = _expression_refusal(node)
        if why:
            return why
        pending.extend(_seq(node.children()))
        pending.extend(_seq(node.innerChildren()))
    return None


def check(spark, statement: str) -> None:
    """Raise ReadOnlyError (naming the rule) when ``statement`` would change anything.

    Parsing runs nothing: a statement Spark cannot parse passes here and fails, with Spark's
    own message, when it is run."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(statement)
    except (Py4JJavaError, PySparkException):
        return
    why = refusal(plan, spark.sparkContext._gateway)
    if why:
        raise ReadOnlyError(f"{RULE}: refused before it ran ({why})")


def install_check_rule(spark) -> None:
    """Make every session created from ``spark`` from now on (``newSession()``, which the JDBC
    server opens per connection) refuse what ``refusal`` refuses, from inside the analyzer.

    The rule is a Python object the JVM calls through py4j's callback server; its refusal is
    thrown in the JVM as a ``java.lang.SecurityException`` naming the rule, which the JDBC
    client receives as the statement's error. ``spark`` itself stays as it was."""
    from pyspark.java_gateway import ensure_callback_server_started

    gateway = spark.sparkContext._gateway
    # A refusal raised in Python reaches the JVM as the Java exception it carries, not as a
    # Python traceback.
    gateway.python_parameters.propagate_java_exceptions = True
    ensure_callback_server_started(gateway)
    spark._jsparkSession.extensions().injectCheckRule(_RuleBuilder(spark._jvm, gateway))


class _ReadOnlyCheck:
    """``LogicalPlan => Unit`` for the analyzer's check rules."""

    def __init__(self, jvm, gateway):
        self._jvm = jvm
        self._gateway = gateway

    def apply(self, plan):
        why = refusal(plan, self._gateway)
        if why:
            from py4j.protocol import Py4JJavaError

            log.warning("sql-server: refused a statement (%s)", why)
            error = self._jvm.java.lang.SecurityException(f"hybridrec: {RULE}: refused ({why})")
            raise Py4JJavaError(RULE, error)
        return None

    class Java:
        implements = ["scala.Function1"]


class _RuleBuilder:
    """``SparkSession => (LogicalPlan => Unit)``: what ``injectCheckRule`` takes."""

    def __init__(self, jvm, gateway):
        self._check = _ReadOnlyCheck(jvm, gateway)

    def apply(self, session):
        return self._check

    class Java:
        implements = ["scala.Function1"]


def _command_refusal(node, name: str) -> str | None:
    if name not in READ_COMMANDS:
        return f"{name} changes the catalog, the tables or the session"
    if name == "SetCommand":
        return _set_refusal(node)
    if name == "CreateViewCommand" and node.viewType().toString() != "LocalTempView":
        return "only session-local temporary views may be created"
    return None


def _set_refusal(node) -> str | None:
    pair = node.kv()
    if pair.isEmpty() or pair.get()._2().isEmpty():
        return None  # SET, SET -v and SET key only read
    key = pair.get()._1()
    if not key.startswith("spark.sql.") or _PROTECTED_SETTING.search(key.lower()):
        return f"SET {key} may change where tables are read or written"
    return None


def _expression_refusal(node) -> str | None:
    """Subqueries inside expressions are plans of their own: ``innerChildren`` brings them."""
    expressions = list(_seq(node.expressions()))
    while expressions:
        expression = expressions.pop()
        name = _simple_name(expression)
        if name in REFLECTION_EXPRESSIONS:
            return "reflect calls JVM methods"
        if name == "UnresolvedFunction":
            function = expression.nameParts().last().lower()
            if function in REFLECTION:
                return f"{function} calls JVM methods"
        expressions.extend(_seq(expression.children()))
    return None


def _simple_name(java_object) -> str:
    return java_object.getClass().getSimpleName().rstrip("$")


def _seq(scala_seq):
    iterator = scala_seq.iterator()
    while iterator.hasNext():
        yield iterator.next()
