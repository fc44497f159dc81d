// Internals of the Jinja2 interpreter (jinja.h): the value type, the syntax tree the parser builds
// and the renderer walks, and the Python semantics of values (truth, str(), ==, <, json.dumps) that
// the renderer, the filters and the tests share.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mslm::jinja {

struct Value;
struct Dict;
using List = std::vector<Value>;

// Positional and keyword arguments of a call, a filter or a test.
struct Args {
    std::vector<Value> positional;
    std::vector<std::pair<std::string, Value>> named;
};
using Function = std::function<Value(const Args&)>;

// A value of the template language, with Python's types. Lists and dicts never change once built
// (transformers renders in jinja2's ImmutableSandboxedEnvironment, which forbids mutating them), so
// copies share them; a namespace is the one mutable object, shared by all its copies. A tuple is a
// list that prints as a tuple and never equals a list.
struct Value {
    enum class Type { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function };
    Type type = Type::Undefined;
    bool boolean = false;
    bool tuple = false;  // List: a Python tuple
    int64_t integer = 0;
    double number = 0;
    // String: the text (UTF-8). Undefined: the error that using it raises ("'x' is undefined").
    std::string string;
    std::shared_ptr<const List> list;
    std::shared_ptr<Dict> dict;  // Dict and Namespace
    std::shared_ptr<const Function> function;

    static Value undefined(std::string why);
    static Value none();
    static Value from(bool b);
    static Value from(int64_t i);
    static Value from(double d);
    static Value from(std::string s);
    static Value from(List items);
    static Value tuple_of(List items);
    static Value from(Dict d);
    static Value namespace_of(Dict d);
    static Value from(Function f);

    bool is(Type t) const { return type == t; }
    bool is_number() const { return type == Type::Bool || type == Type::Int || type == Type::Float; }
};

// Insertion-ordered, like a Python dict: tojson and items() keep the order of the keys.
struct Dict {
    std::vector<std::pair<std::string, Value>> entries;
    const Value* find(std::string_view key) const;
    void set(const std::string& key, Value value);
};

// An error of rendering (a type error, an undefined value used); the renderer adds the line.
struct RenderError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Python semantics (jinja_value.cpp).
bool truthy(const Value& v);
std::string type_name(const Value& v);
std::string to_str(const Value& v);  // str(v); "" for undefined, as jinja2 prints it
std::string repr(const Value& v);
std::string format_float(double d);  // repr(float)
bool equals(const Value& a, const Value& b);
bool less(const Value& a, const Value& b);  // a < b; RenderError for unordered types
// json.dumps(v, indent=indent, separators=(item_sep, key_sep), sort_keys=..., ensure_ascii=...);
// indent < 0 is None.
std::string to_json(const Value& v, int indent, std::string_view item_sep, std::string_view key_sep,
                    bool sort_keys, bool ensure_ascii);
Value from_json(const nlohmann::ordered_json& j);
// The items a for loop visits: a list's elements, a dict's keys, a string's characters, nothing
// for undefined.
List iterate(const Value& v);
int64_t length(const Value& v);  // len(v); 0 for undefined
// Throws the RenderError that using an undefined value raises, when `v` is undefined.
void check_defined(const Value& v);

// Unicode code points of UTF-8 text, and back: strings are indexed, sliced and measured in
// characters, as in Python.
std::vector<uint32_t> code_points(std::string_view s);
std::string from_code_points(const uint32_t* begin, const uint32_t* end);
bool is_space(uint32_t cp);  // str.isspace, and \s of Python's re

// The syntax tree.
struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
    enum class Kind {
        Literal,  // value
        Name,     // name
        List,     // children: the elements
        Tuple,    // children: the elements
        Dict,     // children: key, value, key, value, ...
        Attr,     // children[0].name
        Item,     // children[0][children[1]]
        Slice,    // children[0][children[1]:children[2]:children[3]]; a missing bound is null
        Call,     // children[0](children[1..])
        Filter,   // children[0] | name(children[1..])
        Test,     // children[0] is name(children[1..])
        Unary,    // name children[0]: "-", "+", "not"
        Binary,   // children[0] name children[1]: + - * / // % ** ~ and or
        Compare,  // children[0] ops[0] children[1] ops[1] children[2] ...: chained as in Python
        Cond,     // children[0] if children[1] else children[2] (null: undefined)
    };
    Kind kind;
    int line = 0;
    std::string name;
    Value value;
    std::vector<ExprPtr> children;
    // Call, Filter, Test: the keyword names of the last arg_names.size() arguments.
    std::vector<std::string> arg_names;
    std::vector<std::string> ops;  // Compare: "==", "!=", "<", "<=", ">", ">=", "in", "not in"
};

struct Node;
using Body = std::vector<Node>;

struct Node {
    enum class Kind {
        Text,      // text
        Output,    // {{ expr }}
        If,        // branches: (condition, body), the first true one runs; else otherwise
        For,       // for names in expr [if filter]: body; else when nothing was iterated
        Set,       // set names = expr (several names unpack), or names[0].attr = expr on a namespace
        SetBlock,  // set names[0]: the rendered body
        Macro,     // macro text(names = defaults): body
        Break,
        Continue,
    };
    Node(Kind k, int l) : kind(k), line(l) {}
    Kind kind;
    int line;
    std::string text;  // Text: the text. Macro: its name
    std::string attr;  // Set: the namespace attribute, or empty
    ExprPtr expr;
    ExprPtr filter;
    std::vector<std::string> names;
    std::vector<ExprPtr> defaults;  // one per parameter; null when it has none
    std::vector<std::pair<ExprPtr, Body>> branches;
    Body body;
    Body else_body;
};

// Parses `source`; throws mslm::Error "<name>:<line>:<column>: <what>".
Body parse(std::string_view source, const std::string& name);
// Renders `body` with `variables` as the template's globals; throws mslm::Error "<name>:<line>:
// <what>", or the bare message of raise_exception().
std::string render(const Body& body, const Dict& variables, const std::string& name);

}  // namespace mslm::jinja
