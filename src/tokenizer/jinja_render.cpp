// Syntax tree -> text: statements, expressions, and the filters, tests, methods and globals of
// jinja2 as transformers' chat-template environment has them. Scoping follows jinja2: a for loop's
// body gets a fresh scope on every iteration (a {% set %} there is gone after it), an {% if %}
// body shares its enclosing scope, a macro runs in a scope of its own above the template's
// globals, and a namespace() is shared, so assigning to its attributes is how a value leaves a
// loop.
#include <utf8proc.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <optional>
#include <unordered_map>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/jinja.h"
#include "tokenizer/jinja_impl.h"

namespace mslm::jinja {
namespace {

constexpr int kMaxCallDepth = 256;     // nested macro calls; deeper is runaway recursion
constexpr int64_t kMaxRange = 100000;  // jinja2's sandbox refuses larger range() calls

using T = Value::Type;

struct Scope {
    Scope* parent = nullptr;
    std::unordered_map<std::string, Value> vars;

    const Value* find(const std::string& name) const {
        for (const Scope* s = this; s; s = s->parent) {
            auto it = s->vars.find(name);
            if (it != s->vars.end()) return &it->second;
        }
        return nullptr;
    }
};

enum class Flow { Normal, Break, Continue };

// "'dict object'", "None": how jinja2 names an object in "... has no attribute" messages.
std::string object_desc(const Value& v) {
    if (v.is(T::None)) return "None";
    return fmt::format("'{} object'", type_name(v));
}

Value no_attribute(const Value& obj, const std::string& name) {
    return Value::undefined(object_desc(obj) + " has no attribute '" + name + "'");
}

int64_t as_int(const Value& v, std::string_view what) {
    if (v.is(T::Int)) return v.integer;
    if (v.is(T::Bool)) return v.boolean;
    check_defined(v);
    throw RenderError(std::string(what) + " must be an integer, not '" + type_name(v) + "'");
}

double as_double(const Value& v) {
    return v.is(T::Float) ? v.number : static_cast<double>(as_int(v, "number"));
}

const std::string& as_string(const Value& v, std::string_view what) {
    check_defined(v);
    if (!v.is(T::String))
        throw RenderError(std::string(what) + " must be a string, not '" + type_name(v) + "'");
    return v.string;
}

// Binds `args` to the parameters `params` by position or keyword, as Python does; an absent
// argument is null.
std::vector<const Value*> bind(const Args& args, std::string_view callee,
                               std::initializer_list<const char*> params) {
    if (args.positional.size() > params.size())
        throw RenderError(std::string(callee) + "() takes at most " + std::to_string(params.size()) +
                          " arguments");
    std::vector<const Value*> bound(params.size(), nullptr);
    for (size_t i = 0; i < args.positional.size(); ++i) bound[i] = &args.positional[i];
    for (const auto& [name, value] : args.named) {
        const auto it = std::find_if(params.begin(), params.end(), [&](const char* p) { return name == p; });
        if (it == params.end())
            throw RenderError(std::string(callee) + "() got an unexpected keyword argument '" + name + "'");
        const size_t i = static_cast<size_t>(it - params.begin());
        if (bound[i])
            throw RenderError(std::string(callee) + "() got multiple values for argument '" + name + "'");
        bound[i] = &value;
    }
    return bound;
}

// ---- strings, with Python's str methods

using CodePoints = std::vector<uint32_t>;

Value from_points(const CodePoints& cps, size_t begin, size_t end) {
    return Value::from(from_code_points(cps.data() + begin, cps.data() + end));
}

// str.strip / lstrip / rstrip: `chars` null strips whitespace.
std::string strip(const std::string& s, bool left, bool right, const Value* chars) {
    const CodePoints cps = code_points(s);
    CodePoints set;
    const bool by_set = chars && !chars->is(T::None);
    if (by_set) set = code_points(as_string(*chars, "strip() argument"));
    auto drop = [&](uint32_t cp) {
        return by_set ? std::find(set.begin(), set.end(), cp) != set.end() : is_space(cp);
    };
    size_t begin = 0, end = cps.size();
    if (left)
        while (begin < end && drop(cps[begin])) ++begin;
    if (right)
        while (end > begin && drop(cps[end - 1])) --end;
    return from_code_points(cps.data() + begin, cps.data() + end);
}

Value split(const std::string& s, const Value* sep_arg, const Value* maxsplit_arg) {
    const int64_t maxsplit = maxsplit_arg ? as_int(*maxsplit_arg, "maxsplit") : -1;
    List parts;
    if (!sep_arg || sep_arg->is(T::None)) {
        // Runs of whitespace separate; leading and trailing whitespace make no empty parts.
        const CodePoints cps = code_points(s);
        size_t i = 0;
        while (true) {
            while (i < cps.size() && is_space(cps[i])) ++i;
            if (i == cps.size()) break;
            if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
                parts.push_back(from_points(cps, i, cps.size()));
                break;
            }
            size_t j = i;
            while (j < cps.size() && !is_space(cps[j])) ++j;
            parts.push_back(from_points(cps, i, j));
            i = j;
        }
        return Value::from(std::move(parts));
    }
    const std::string& sep = as_string(*sep_arg, "split() separator");
    if (sep.empty()) throw RenderError("empty separator");
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
        const size_t at = s.find(sep, start);
        if (at == std::string::npos) break;
        parts.push_back(Value::from(s.substr(start, at - start)));
        start = at + sep.size();
    }
    parts.push_back(Value::from(s.substr(start)));
    return Value::from(std::move(parts));
}

std::string replace(const std::string& s, const std::string& old, const std::string& with, int64_t count) {
    std::string out;
    if (old.empty()) {
        // Python inserts `with` before every character and at the end.
        const CodePoints cps = code_points(s);
        for (size_t i = 0; i <= cps.size(); ++i) {
            if (count < 0 || static_cast<int64_t>(i) < count) out += with;
            if (i < cps.size()) utf8::append_codepoint(cps[i], out);
        }
        return out;
    }
    size_t start = 0;
    for (int64_t n = 0; count < 0 || n < count; ++n) {
        const size_t at = s.find(old, start);
        if (at == std::string::npos) break;
        out.append(s, start, at - start);
        out += with;
        start = at + old.size();
    }
    return out + s.substr(start);
}

enum class Case { Lower, Upper, Title };

uint32_t map_case(uint32_t cp, Case c) {
    const auto i = static_cast<utf8proc_int32_t>(cp);
    return static_cast<uint32_t>(c == Case::Lower   ? utf8proc_tolower(i)
                                 : c == Case::Upper ? utf8proc_toupper(i)
                                                    : utf8proc_totitle(i));
}

std::string convert_case(const std::string& s, Case c) {
    std::string out;
    for (uint32_t cp : code_points(s)) utf8::append_codepoint(map_case(cp, c), out);
    return out;
}

// str.capitalize: the first character in title case, the rest lower case.
std::string capitalize(const std::string& s) {
    std::string out;
    const CodePoints cps = code_points(s);
    for (size_t i = 0; i < cps.size(); ++i)
        utf8::append_codepoint(map_case(cps[i], i ? Case::Lower : Case::Title), out);
    return out;
}

// str.title: a cased character after an uncased one in title case, other ones in lower case.
std::string title_method(const std::string& s) {
    std::string out;
    bool after_cased = false;
    for (uint32_t cp : code_points(s)) {
        utf8::append_codepoint(map_case(cp, after_cased ? Case::Lower : Case::Title), out);
        const auto category = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
        after_cased = category == UTF8PROC_CATEGORY_LU || category == UTF8PROC_CATEGORY_LL ||
                      category == UTF8PROC_CATEGORY_LT;
    }
    return out;
}

// jinja2's title filter: capitalize each word, words starting after whitespace or one of -({[<.
std::string title_filter(const std::string& s) {
    std::string out;
    bool word_start = true;
    for (uint32_t cp : code_points(s)) {
        const bool separator = is_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
        utf8::append_codepoint(separator ? cp : map_case(cp, word_start ? Case::Upper : Case::Lower), out);
        word_start = separator;
    }
    return out;
}

bool affix_match(const std::string& s, const Value& affix, bool prefix) {
    auto one = [&](const Value& a) {
        const std::string& x = as_string(a, prefix ? "startswith() argument" : "endswith() argument");
        return x.size() <= s.size() &&
               (prefix ? s.compare(0, x.size(), x) : s.compare(s.size() - x.size(), x.size(), x)) == 0;
    };
    if (affix.is(T::List)) return std::any_of(affix.list->begin(), affix.list->end(), one);
    return one(affix);
}

Value string_method(const std::string& s, const std::string& name) {
    auto method = [](auto f) { return Value::from(Function(f)); };
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
        return method([s, name](const Args& a) {
            const auto p = bind(a, name, {"chars"});
            return Value::from(strip(s, name != "rstrip", name != "lstrip", p[0]));
        });
    }
    if (name == "startswith" || name == "endswith") {
        return method([s, name](const Args& a) {
            const auto p = bind(a, name, {"prefix"});
            if (!p[0]) throw RenderError(name + "() takes exactly one argument");
            return Value::from(affix_match(s, *p[0], name == "startswith"));
        });
    }
    if (name == "split") {
        return method([s](const Args& a) {
            const auto p = bind(a, "split", {"sep", "maxsplit"});
            return split(s, p[0], p[1]);
        });
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
        return method([s, name](const Args& a) {
            bind(a, name, {});
            if (name == "title") return Value::from(title_method(s));
            if (name == "capitalize") return Value::from(capitalize(s));
            return Value::from(convert_case(s, name == "upper" ? Case::Upper : Case::Lower));
        });
    }
    if (name == "replace") {
        return method([s](const Args& a) {
            const auto p = bind(a, "replace", {"old", "new", "count"});
            if (!p[0] || !p[1]) throw RenderError("replace() takes at least 2 arguments");
            return Value::from(replace(s, as_string(*p[0], "replace() argument"),
                                       as_string(*p[1], "replace() argument"),
                                       p[2] ? as_int(*p[2], "count") : -1));
        });
    }
    return Value::undefined("'str object' has no attribute '" + name + "'");
}

// ---- attribute and item access (jinja2's getattr / getitem)

List items_of(const Dict& d) {
    List pairs;
    for (const auto& [key, value] : d.entries)
        pairs.push_back(Value::tuple_of(List{Value::from(key), value}));
    return pairs;
}

bool is_dict_method(const std::string& name) {
    return name == "items" || name == "keys" || name == "values" || name == "get";
}

Value dict_method(const Value& obj, const std::string& name) {
    return Value::from(Function([obj, name](const Args& a) {
        if (name == "get") {
            const auto p = bind(a, "get", {"key", "default"});
            if (!p[0]) throw RenderError("get() takes at least 1 argument");
            const Value* found = p[0]->is(T::String) ? obj.dict->find(p[0]->string) : nullptr;
            return found ? *found : p[1] ? *p[1] : Value::none();
        }
        bind(a, name, {});
        if (name == "items") return Value::from(items_of(*obj.dict));
        List out;
        for (const auto& [key, value] : obj.dict->entries)
            out.push_back(name == "keys" ? Value::from(key) : value);
        return Value::from(std::move(out));
    }));
}

// obj.name: a Python attribute (a method) first, then the item of that name, as jinja2 does.
Value get_attr(const Value& obj, const std::string& name) {
    switch (obj.type) {
        case T::Undefined:
            throw RenderError(obj.string);
        case T::Dict: {
            if (is_dict_method(name)) return dict_method(obj, name);
            const Value* v = obj.dict->find(name);
            return v ? *v : no_attribute(obj, name);
        }
        case T::Namespace: {
            const Value* v = obj.dict->find(name);
            return v ? *v : no_attribute(obj, name);
        }
        case T::String:
            return string_method(obj.string, name);
        default:
            return no_attribute(obj, name);
    }
}

// Python's index rule: negative counts from the end; std::nullopt when out of range.
std::optional<size_t> normalize_index(int64_t i, size_t size) {
    if (i < 0) i += static_cast<int64_t>(size);
    if (i < 0 || i >= static_cast<int64_t>(size)) return std::nullopt;
    return static_cast<size_t>(i);
}

// obj[key]: the item first, then an attribute of that name.
Value get_item(const Value& obj, const Value& key) {
    check_defined(obj);
    if (obj.is(T::Dict) || obj.is(T::Namespace)) {
        if (!key.is(T::String)) return Value::undefined(object_desc(obj) + " has no element " + repr(key));
        const Value* v = obj.dict->find(key.string);
        if (v) return *v;
        if (obj.is(T::Dict) && is_dict_method(key.string)) return dict_method(obj, key.string);
        return no_attribute(obj, key.string);
    }
    if (key.is(T::Int) || key.is(T::Bool)) {
        const int64_t i = key.is(T::Int) ? key.integer : key.boolean;
        if (obj.is(T::List)) {
            if (auto k = normalize_index(i, obj.list->size())) return (*obj.list)[*k];
        } else if (obj.is(T::String)) {
            const CodePoints cps = code_points(obj.string);
            if (auto k = normalize_index(i, cps.size())) return from_points(cps, *k, *k + 1);
        }
        return Value::undefined(object_desc(obj) + " has no element " + std::to_string(i));
    }
    if (key.is(T::String)) return get_attr(obj, key.string);
    return Value::undefined(object_desc(obj) + " has no element " + repr(key));
}

// obj[start:stop:step] with Python's clamping of the bounds. Unlike obj[key], jinja2 compiles a slice
// to Python's own subscript, so slicing what is no sequence raises instead of giving undefined.
Value slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
    check_defined(obj);
    const int64_t step = step_v.is(T::None) ? 1 : as_int(step_v, "slice step");
    if (step == 0) throw RenderError("slice step cannot be zero");
    const CodePoints cps = obj.is(T::String) ? code_points(obj.string) : CodePoints{};
    int64_t n = 0;
    if (obj.is(T::String))
        n = static_cast<int64_t>(cps.size());
    else if (obj.is(T::List))
        n = static_cast<int64_t>(obj.list->size());
    else
        throw RenderError("'" + type_name(obj) + "' object is not subscriptable");
    auto bound = [&](const Value& v, int64_t if_none) {
        if (v.is(T::None)) return if_none;
        int64_t i = as_int(v, "slice index");
        if (i < 0) i = std::max<int64_t>(i + n, step < 0 ? -1 : 0);
        return std::min<int64_t>(i, step < 0 ? n - 1 : n);
    };
    const int64_t start = bound(start_v, step < 0 ? n - 1 : 0);
    const int64_t stop = bound(stop_v, step < 0 ? -1 : n);
    std::vector<size_t> picked;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
        picked.push_back(static_cast<size_t>(i));
    if (obj.is(T::String)) {
        std::string out;
        for (size_t i : picked) utf8::append_codepoint(cps[i], out);
        return Value::from(std::move(out));
    }
    List out;
    for (size_t i : picked) out.push_back((*obj.list)[i]);
    return obj.tuple ? Value::tuple_of(std::move(out)) : Value::from(std::move(out));
}

// ---- operators

bool contains(const Value& container, const Value& item) {
    switch (container.type) {
        case T::Undefined:
            return false;
        case T::String:
            if (!item.is(T::String))
                throw RenderError("'in <string>' requires string as left operand, not " + type_name(item));
            return container.string.find(item.string) != std::string::npos;
        case T::List:
            return std::any_of(container.list->begin(), container.list->end(),
                               [&](const Value& v) { return equals(v, item); });
        case T::Dict:
            if ((item.is(T::List) && !item.tuple) || item.is(T::Dict) || item.is(T::Namespace))
                throw RenderError("unhashable type: '" + type_name(item) + "'");
            return item.is(T::String) && container.dict->find(item.string);
        default:
            throw RenderError("argument of type '" + type_name(container) + "' is not iterable");
    }
}

bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equals(a, b);
    if (op == "!=") return !equals(a, b);
    if (op == "<") return less(a, b);
    if (op == ">") return less(b, a);
    if (op == "<=") return less(a, b) || equals(a, b);
    if (op == ">=") return less(b, a) || equals(a, b);
    if (op == "in") return contains(b, a);
    return !contains(b, a);  // "not in"
}

[[noreturn]] void unsupported_operands(const std::string& op, const Value& a, const Value& b) {
    throw RenderError("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" +
                      type_name(b) + "'");
}

int64_t checked_add(int64_t x, int64_t y) {
    int64_t r = 0;
    if (__builtin_add_overflow(x, y, &r)) throw RenderError("integer overflow");
    return r;
}
int64_t checked_sub(int64_t x, int64_t y) {
    int64_t r = 0;
    if (__builtin_sub_overflow(x, y, &r)) throw RenderError("integer overflow");
    return r;
}
int64_t checked_mul(int64_t x, int64_t y) {
    int64_t r = 0;
    if (__builtin_mul_overflow(x, y, &r)) throw RenderError("integer overflow");
    return r;
}

Value repeat(const Value& seq, int64_t times) {
    if (seq.is(T::String)) {
        std::string out;
        for (int64_t i = 0; i < times; ++i) out += seq.string;
        return Value::from(std::move(out));
    }
    List out;
    for (int64_t i = 0; i < times; ++i) out.insert(out.end(), seq.list->begin(), seq.list->end());
    return seq.tuple ? Value::tuple_of(std::move(out)) : Value::from(std::move(out));
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") return Value::from(to_str(a) + to_str(b));
    check_defined(a);
    check_defined(b);
    const bool numbers = a.is_number() && b.is_number();
    const bool ints = numbers && !a.is(T::Float) && !b.is(T::Float);
    if (op == "+") {
        if (a.is(T::String) && b.is(T::String)) return Value::from(a.string + b.string);
        if (a.is(T::List) && b.is(T::List) && a.tuple == b.tuple) {
            List out = *a.list;
            out.insert(out.end(), b.list->begin(), b.list->end());
            return a.tuple ? Value::tuple_of(std::move(out)) : Value::from(std::move(out));
        }
        if (a.is(T::String) || a.is(T::List))
            throw RenderError("can only concatenate " + type_name(a) + " (not \"" + type_name(b) + "\") to " +
                              type_name(a));
    }
    if (op == "*" && !numbers) {
        if ((a.is(T::String) || a.is(T::List)) && (b.is(T::Int) || b.is(T::Bool)))
            return repeat(a, as_int(b, "count"));
        if ((b.is(T::String) || b.is(T::List)) && (a.is(T::Int) || a.is(T::Bool)))
            return repeat(b, as_int(a, "count"));
    }
    if (!numbers) {
        if (op == "%" && a.is(T::String)) throw RenderError("'%' string formatting is not supported");
        unsupported_operands(op, a, b);
    }
    if (ints) {
        const int64_t x = as_int(a, "operand"), y = as_int(b, "operand");
        if (op == "+") return Value::from(checked_add(x, y));
        if (op == "-") return Value::from(checked_sub(x, y));
        if (op == "*") return Value::from(checked_mul(x, y));
        if (op == "//" || op == "%") {
            if (y == 0) throw RenderError("integer division or modulo by zero");
            if (y == -1) return Value::from(op == "%" ? int64_t{0} : checked_sub(0, x));
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors
                --q;
                m += y;
            }
            return Value::from(op == "//" ? q : m);
        }
        if (op == "**" && y >= 0) {
            int64_t result = 1;
            for (int64_t i = 0; i < y && result != 0; ++i) result = checked_mul(result, x);
            return Value::from(result);
        }
    }
    const double x = as_double(a), y = as_double(b);
    if (op == "+") return Value::from(x + y);
    if (op == "-") return Value::from(x - y);
    if (op == "*") return Value::from(x * y);
    if (op == "**") {
        if (x == 0 && y < 0) throw RenderError("0.0 cannot be raised to a negative power");
        return Value::from(std::pow(x, y));
    }
    if (y == 0) throw RenderError(op == "/" ? "division by zero" : "float modulo or division by zero");
    if (op == "/") return Value::from(x / y);
    // CPython's float divmod: the floor of the exact quotient, not of the rounded x / y.
    double mod = std::fmod(x, y);
    double div = (x - mod) / y;
    if (mod != 0 && ((y < 0) != (mod < 0))) {
        mod += y;
        div -= 1.0;
    }
    if (op == "%") return Value::from(mod != 0 ? mod : std::copysign(0.0, y));
    if (div == 0) return Value::from(std::copysign(0.0, x / y));
    double floor_div = std::floor(div);
    if (div - floor_div > 0.5) floor_div += 1.0;
    return Value::from(floor_div);
}

// ---- tests and filters

Value apply_filter(const std::string& name, const Value& v, const Args& args);  // map() calls it by name

bool apply_test(const std::string& name, const Value& v, const Args& args) {
    static const std::unordered_map<std::string, std::function<bool(const Value&)>> kUnary = {
        {"defined", [](const Value& x) { return !x.is(T::Undefined); }},
        {"undefined", [](const Value& x) { return x.is(T::Undefined); }},
        {"none", [](const Value& x) { return x.is(T::None); }},
        {"boolean", [](const Value& x) { return x.is(T::Bool); }},
        {"true", [](const Value& x) { return x.is(T::Bool) && x.boolean; }},
        {"false", [](const Value& x) { return x.is(T::Bool) && !x.boolean; }},
        {"integer", [](const Value& x) { return x.is(T::Int); }},
        {"float", [](const Value& x) { return x.is(T::Float); }},
        {"number", [](const Value& x) { return x.is_number(); }},
        {"string", [](const Value& x) { return x.is(T::String); }},
        {"mapping", [](const Value& x) { return x.is(T::Dict); }},
        // jinja2's Undefined has __len__ and __getitem__, which is what the sequence test checks.
        {"sequence",
         [](const Value& x) {
             return x.is(T::String) || x.is(T::List) || x.is(T::Dict) || x.is(T::Undefined);
         }},
        {"iterable",
         [](const Value& x) {
             return x.is(T::String) || x.is(T::List) || x.is(T::Dict) || x.is(T::Undefined);
         }},
        {"callable", [](const Value& x) { return x.is(T::Function); }},
        {"odd",
         [](const Value& x) {
             return equals(arithmetic("%", x, Value::from(int64_t{2})), Value::from(int64_t{1}));
         }},
        {"even",
         [](const Value& x) {
             return equals(arithmetic("%", x, Value::from(int64_t{2})), Value::from(int64_t{0}));
         }},
    };
    const auto it = kUnary.find(name);
    if (it != kUnary.end()) {
        bind(args, name, {});
        return it->second(v);
    }
    // Tests of two values: `x is divisibleby 3`, `x is equalto(y)`.
    auto other = [&]() -> const Value& {
        const auto p = bind(args, name, {"other"});
        if (!p[0]) throw RenderError("test '" + name + "' takes one argument");
        return *p[0];
    };
    if (name == "divisibleby") return equals(arithmetic("%", v, other()), Value::from(int64_t{0}));
    if (name == "eq" || name == "equalto") return compare("==", v, other());
    if (name == "ne") return compare("!=", v, other());
    if (name == "lt" || name == "lessthan") return compare("<", v, other());
    if (name == "le") return compare("<=", v, other());
    if (name == "gt" || name == "greaterthan") return compare(">", v, other());
    if (name == "ge") return compare(">=", v, other());
    if (name == "in") return contains(other(), v);
    throw RenderError("test '" + name + "' is not supported");
}

// The attribute path of map(attribute=), selectattr and join(attribute=): "a.b", "0".
Value get_path(const Value& v, const Value& path) {
    if (path.is(T::Int)) return get_item(v, path);
    Value out = v;
    const std::string& p = as_string(path, "attribute");
    for (size_t start = 0;;) {
        const size_t dot = p.find('.', start);
        const std::string part = p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        int64_t index = 0;
        const auto res = std::from_chars(part.data(), part.data() + part.size(), index);
        const bool numeric = !part.empty() && res.ec == std::errc() && res.ptr == part.data() + part.size();
        out = numeric ? get_item(out, Value::from(index)) : get_item(out, Value::from(part));
        if (dot == std::string::npos) return out;
        start = dot + 1;
    }
}

// select / reject / selectattr / rejectattr: keep the items whose test (or truth) is `keep`.
Value select(const Value& v, const Args& args, bool by_attr, bool keep) {
    Args rest;
    size_t first = 0;
    const Value* attr = nullptr;
    if (by_attr) {
        if (args.positional.empty()) throw RenderError("selectattr/rejectattr need an attribute name");
        attr = &args.positional[0];
        first = 1;
    }
    const Value* test = args.positional.size() > first ? &args.positional[first] : nullptr;
    rest.positional.assign(
        args.positional.begin() + static_cast<ptrdiff_t>(std::min(args.positional.size(), first + 1)),
        args.positional.end());
    rest.named = args.named;
    List out;
    for (const Value& item : iterate(v)) {
        const Value subject = attr ? get_path(item, *attr) : item;
        const bool passed = test ? apply_test(as_string(*test, "test name"), subject, rest) : truthy(subject);
        if (passed == keep) out.push_back(item);
    }
    return Value::from(std::move(out));
}

Value map_filter(const Value& v, const Args& args) {
    List out;
    if (args.positional.empty()) {
        const auto p = bind(args, "map", {"attribute", "default"});
        if (!p[0]) throw RenderError("map() needs a filter name or attribute=");
        for (const Value& item : iterate(v)) {
            Value x = get_path(item, *p[0]);
            out.push_back(x.is(T::Undefined) && p[1] ? *p[1] : x);
        }
        return Value::from(std::move(out));
    }
    Args rest;
    rest.positional.assign(args.positional.begin() + 1, args.positional.end());
    rest.named = args.named;
    const std::string& filter = as_string(args.positional[0], "filter name");
    for (const Value& item : iterate(v)) out.push_back(apply_filter(filter, item, rest));
    return Value::from(std::move(out));
}

Value to_int(const Value& v, const Value* fallback) {
    const Value otherwise = fallback ? *fallback : Value::from(int64_t{0});
    if (v.is(T::Int) || v.is(T::Bool)) return Value::from(as_int(v, "int"));
    if (v.is(T::Float))
        return std::isfinite(v.number) ? Value::from(static_cast<int64_t>(v.number)) : otherwise;
    if (!v.is(T::String)) return otherwise;
    std::string s = strip(v.string, true, true, nullptr);
    if (!s.empty() && s[0] == '+') s.erase(0, 1);
    int64_t i = 0;
    auto res = std::from_chars(s.data(), s.data() + s.size(), i);
    if (!s.empty() && res.ec == std::errc() && res.ptr == s.data() + s.size()) return Value::from(i);
    double d = 0;
    res = std::from_chars(s.data(), s.data() + s.size(), d);
    if (!s.empty() && res.ec == std::errc() && res.ptr == s.data() + s.size() && std::isfinite(d))
        return Value::from(static_cast<int64_t>(d));
    return otherwise;
}

Value to_float(const Value& v, const Value* fallback) {
    const Value otherwise = fallback ? *fallback : Value::from(0.0);
    if (v.is_number()) return Value::from(as_double(v));
    if (!v.is(T::String)) return otherwise;
    std::string s = strip(v.string, true, true, nullptr);
    if (!s.empty() && s[0] == '+') s.erase(0, 1);
    double d = 0;
    const auto res = std::from_chars(s.data(), s.data() + s.size(), d);
    if (!s.empty() && res.ec == std::errc() && res.ptr == s.data() + s.size()) return Value::from(d);
    return otherwise;
}

// sort(reverse=false, case_sensitive=false, attribute=none): a stable sort, as Python's sorted().
Value sort(const Value& v, const Args& args) {
    const auto p = bind(args, "sort", {"reverse", "case_sensitive", "attribute"});
    const bool reverse = p[0] && truthy(*p[0]);
    const bool case_sensitive = p[1] && truthy(*p[1]);
    List items = iterate(v);
    std::vector<std::pair<Value, Value>> keyed;  // (key, item)
    for (Value& item : items) {
        Value key = p[2] && !p[2]->is(T::None) ? get_path(item, *p[2]) : item;
        if (!case_sensitive && key.is(T::String)) key = Value::from(convert_case(key.string, Case::Lower));
        keyed.emplace_back(std::move(key), std::move(item));
    }
    std::stable_sort(keyed.begin(), keyed.end(), [reverse](const auto& a, const auto& b) {
        return reverse ? less(b.first, a.first) : less(a.first, b.first);
    });
    List out;
    for (auto& [key, item] : keyed) out.push_back(std::move(item));
    return Value::from(std::move(out));
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=indent, separators=separators,
// sort_keys=sort_keys), unlike jinja2's own, which escapes HTML characters.
Value tojson(const Value& v, const Args& args) {
    const auto p = bind(args, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
    const int indent = p[1] && !p[1]->is(T::None) ? static_cast<int>(as_int(*p[1], "indent")) : -1;
    std::string item_sep = indent >= 0 ? "," : ", ", key_sep = ": ";
    if (p[2] && !p[2]->is(T::None)) {
        const List seps = iterate(*p[2]);
        if (seps.size() != 2) throw RenderError("tojson separators must be a pair of strings");
        item_sep = as_string(seps[0], "separator");
        key_sep = as_string(seps[1], "separator");
    }
    return Value::from(to_json(v, indent, item_sep, key_sep, p[3] && truthy(*p[3]), p[0] && truthy(*p[0])));
}

Value apply_filter(const std::string& name, const Value& v, const Args& args) {
    if (name == "tojson") return tojson(v, args);
    if (name == "map") return map_filter(v, args);
    if (name == "select" || name == "reject") return select(v, args, false, name == "select");
    if (name == "selectattr" || name == "rejectattr") return select(v, args, true, name == "selectattr");
    if (name == "default" || name == "d") {
        const auto p = bind(args, name, {"default_value", "boolean"});
        const bool replace_falsy = p[1] && truthy(*p[1]);
        if (v.is(T::Undefined) || (replace_falsy && !truthy(v)))
            return p[0] ? *p[0] : Value::from(std::string());
        return v;
    }
    if (name == "join") {
        const auto p = bind(args, name, {"d", "attribute"});
        const std::string sep = p[0] ? to_str(*p[0]) : "";
        std::string out;
        bool first = true;
        for (const Value& item : iterate(v)) {
            if (!first) out += sep;
            first = false;
            out += to_str(p[1] ? get_path(item, *p[1]) : item);
        }
        return Value::from(std::move(out));
    }
    if (name == "trim") {
        const auto p = bind(args, name, {"chars"});
        return Value::from(strip(to_str(v), true, true, p[0]));
    }
    if (name == "replace") {
        const auto p = bind(args, name, {"old", "new", "count"});
        if (!p[0] || !p[1]) throw RenderError("replace() takes at least 2 arguments");
        return Value::from(replace(to_str(v), to_str(*p[0]), to_str(*p[1]),
                                   p[2] && !p[2]->is(T::None) ? as_int(*p[2], "count") : -1));
    }
    if (name == "int" || name == "float") {
        const auto p = bind(args, name, {"default"});
        check_defined(v);
        return name == "int" ? to_int(v, p[0]) : to_float(v, p[0]);
    }
    if (name == "sort") return sort(v, args);
    bind(args, name, {});  // the rest take no arguments
    if (name == "length" || name == "count") return Value::from(length(v));
    if (name == "string") return v.is(T::String) ? v : Value::from(to_str(v));
    if (name == "lower") return Value::from(convert_case(to_str(v), Case::Lower));
    if (name == "upper") return Value::from(convert_case(to_str(v), Case::Upper));
    if (name == "capitalize") return Value::from(capitalize(to_str(v)));
    if (name == "title") return Value::from(title_filter(to_str(v)));
    if (name == "list") return Value::from(iterate(v));
    if (name == "first" || name == "last") {
        const List items = iterate(v);
        if (items.empty()) return Value::undefined("No " + name + " item, sequence was empty.");
        return name == "first" ? items.front() : items.back();
    }
    if (name == "reverse") {
        if (v.is(T::String)) {
            CodePoints cps = code_points(v.string);
            std::reverse(cps.begin(), cps.end());
            return from_points(cps, 0, cps.size());
        }
        List items = iterate(v);
        std::reverse(items.begin(), items.end());
        return Value::from(std::move(items));
    }
    if (name == "items") {
        if (v.is(T::Undefined)) return Value::from(List{});
        if (!v.is(T::Dict)) throw RenderError("Can only get item pairs from a mapping.");
        return Value::from(items_of(*v.dict));
    }
    if (name == "abs") {
        if (v.is(T::Float)) return Value::from(std::fabs(v.number));
        const int64_t i = as_int(v, "abs() operand");
        return Value::from(i < 0 ? checked_sub(0, i) : i);
    }
    throw RenderError("filter '" + name + "' is not supported");
}

// ---- globals

Value range(const Args& args) {
    const auto p = bind(args, "range", {"start", "stop", "step"});
    if (!p[0]) throw RenderError("range expected at least 1 argument, got 0");
    int64_t start = 0, stop = 0, step = 1;
    if (p[1]) {
        start = as_int(*p[0], "range() argument");
        stop = as_int(*p[1], "range() argument");
        if (p[2]) step = as_int(*p[2], "range() argument");
    } else {
        stop = as_int(*p[0], "range() argument");
    }
    if (step == 0) throw RenderError("range() arg 3 must not be zero");
    List out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (static_cast<int64_t>(out.size()) >= kMaxRange)
            throw RenderError("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        out.push_back(Value::from(i));
    }
    return Value::from(std::move(out));
}

// dict(mapping, **kwargs), which namespace() takes too.
Dict make_dict(const Args& args, std::string_view callee) {
    if (args.positional.size() > 1)
        throw RenderError(std::string(callee) + "() takes at most 1 positional argument");
    Dict d;
    if (!args.positional.empty()) {
        const Value& init = args.positional[0];
        if (init.is(T::Dict)) {
            d = *init.dict;
        } else {
            for (const Value& pair : iterate(init)) {
                const List kv = iterate(pair);
                if (kv.size() != 2)
                    throw RenderError(std::string(callee) + "() sequence elements must be pairs");
                d.set(as_string(kv[0], "key"), kv[1]);
            }
        }
    }
    for (const auto& [key, value] : args.named) d.set(key, value);
    return d;
}

void check_namespace_name(const std::string& name) {
    if (!name.empty() && name[0] == '_')
        throw RenderError(
            "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + name +
            "'. Please rename the attribute.");
}

Dict builtins() {
    Dict g;
    g.set("range", Value::from(Function(range)));
    g.set("dict", Value::from(Function([](const Args& a) { return Value::from(make_dict(a, "dict")); })));
    g.set("namespace", Value::from(Function([](const Args& a) {
              Dict d = make_dict(a, "namespace");
              for (const auto& entry : d.entries) check_namespace_name(entry.first);
              return Value::namespace_of(std::move(d));
          })));
    // Not a RenderError: the template's own message reaches the user as it is written.
    g.set("raise_exception", Value::from(Function([](const Args& a) -> Value {
              const auto p = bind(a, "raise_exception", {"message"});
              throw Error(p[0] ? to_str(*p[0]) : "");
          })));
    g.set("strftime_now", Value::from(Function([](const Args& a) {
              const auto p = bind(a, "strftime_now", {"format"});
              if (!p[0]) throw RenderError("strftime_now() takes exactly one argument");
              const std::string& format = as_string(*p[0], "format");
              const std::time_t now = std::time(nullptr);
              std::tm local{};
              localtime_r(&now, &local);
              char buf[512];
              const size_t n = format.empty() ? 0 : std::strftime(buf, sizeof buf, format.c_str(), &local);
              return Value::from(std::string(buf, n));
          })));
    return g;
}

// ---- the renderer

class Renderer {
public:
    explicit Renderer(const std::string& name) : name_(name) {}

    std::string run(const Body& body, const Dict& variables) {
        for (auto& [key, value] : builtins().entries) root_.vars[key] = std::move(value);
        for (const auto& [key, value] : variables.entries) root_.vars[key] = value;
        std::string out;
        try {
            exec(body, root_, out);
        } catch (const RenderError& e) {
            fail("{}:{}: {}", name_, line_, e.what());
        }
        return out;
    }

private:
    Flow exec(const Body& body, Scope& scope, std::string& out) {
        for (const Node& node : body) {
            const Flow flow = exec(node, scope, out);
            if (flow != Flow::Normal) return flow;
        }
        return Flow::Normal;
    }

    Flow exec(const Node& node, Scope& scope, std::string& out) {
        line_ = node.line;
        switch (node.kind) {
            case Node::Kind::Text:
                out += node.text;
                break;
            case Node::Kind::Output:
                out += to_str(eval(*node.expr, scope));
                break;
            case Node::Kind::If:
                for (const auto& [condition, body] : node.branches)
                    if (truthy(eval(*condition, scope))) return exec(body, scope, out);
                return exec(node.else_body, scope, out);
            case Node::Kind::For:
                return exec_for(node, scope, out);
            case Node::Kind::Set: {
                const Value value = eval(*node.expr, scope);
                line_ = node.line;
                if (node.attr.empty()) {
                    assign(scope, node.names, value);
                    break;
                }
                const Value* target = scope.find(node.names[0]);
                if (!target || !target->is(T::Namespace))
                    throw RenderError("cannot assign attribute on non-namespace object '" + node.names[0] +
                                      "'");
                check_namespace_name(node.attr);
                target->dict->set(node.attr, value);
                break;
            }
            case Node::Kind::SetBlock: {
                std::string captured;
                exec(node.body, scope, captured);
                scope.vars[node.names[0]] = Value::from(std::move(captured));
                break;
            }
            case Node::Kind::Macro:
                scope.vars[node.text] = macro(node);
                break;
            case Node::Kind::Break:
                return Flow::Break;
            case Node::Kind::Continue:
                return Flow::Continue;
        }
        return Flow::Normal;
    }

    // `names = value`; several names unpack a sequence, as Python's tuple assignment does.
    static void assign(Scope& scope, const std::vector<std::string>& names, const Value& value) {
        if (names.size() == 1) {
            scope.vars[names[0]] = value;
            return;
        }
        const List items = iterate(value);
        if (items.size() != names.size())
            throw RenderError((items.size() < names.size() ? "not enough" : "too many") +
                              std::string(" values to unpack (expected ") + std::to_string(names.size()) +
                              ", got " + std::to_string(items.size()) + ")");
        for (size_t i = 0; i < names.size(); ++i) scope.vars[names[i]] = items[i];
    }

    Flow exec_for(const Node& node, Scope& scope, std::string& out) {
        const Value iterable = eval(*node.expr, scope);
        List items = iterate(iterable);
        if (node.filter) {
            // The `if` of a for tag filters before the loop counts: loop.length is the filtered length.
            List kept;
            for (const Value& item : items) {
                Scope probe{&scope, {}};
                assign(probe, node.names, item);
                if (truthy(eval(*node.filter, probe))) kept.push_back(item);
            }
            items = std::move(kept);
        }
        if (items.empty()) return exec(node.else_body, scope, out);
        const auto n = static_cast<int64_t>(items.size());
        for (int64_t i = 0; i < n; ++i) {
            Scope iteration{&scope, {}};
            assign(iteration, node.names, items[static_cast<size_t>(i)]);
            Dict loop;
            loop.set("index", Value::from(i + 1));
            loop.set("index0", Value::from(i));
            loop.set("revindex", Value::from(n - i));
            loop.set("revindex0", Value::from(n - i - 1));
            loop.set("first", Value::from(i == 0));
            loop.set("last", Value::from(i == n - 1));
            loop.set("length", Value::from(n));
            loop.set("depth", Value::from(int64_t{1}));
            loop.set("depth0", Value::from(int64_t{0}));
            if (i > 0) loop.set("previtem", items[static_cast<size_t>(i - 1)]);
            if (i + 1 < n) loop.set("nextitem", items[static_cast<size_t>(i + 1)]);
            loop.set("cycle", Value::from(Function([i](const Args& a) {
                         if (a.positional.empty()) throw RenderError("no items for cycling given");
                         return a.positional[static_cast<size_t>(i) % a.positional.size()];
                     })));
            iteration.vars["loop"] = Value::from(std::move(loop));
            if (exec(node.body, iteration, out) == Flow::Break) break;
        }
        return Flow::Normal;
    }

    // A macro runs in its own scope above the globals; it returns what its body renders.
    Value macro(const Node& node) {
        return Value::from(Function([this, &node](const Args& args) {
            if (args.positional.size() > node.names.size())
                throw RenderError("macro '" + node.text + "' takes not more than " +
                                  std::to_string(node.names.size()) + " argument(s)");
            Scope local{&root_, {}};
            for (size_t i = 0; i < args.positional.size(); ++i)
                local.vars[node.names[i]] = args.positional[i];
            for (const auto& [key, value] : args.named) {
                const auto it = std::find(node.names.begin(), node.names.end(), key);
                if (it == node.names.end() || local.vars.count(key))
                    throw RenderError("macro '" + node.text + "' got an unexpected keyword argument '" + key +
                                      "'");
                local.vars[key] = value;
            }
            for (size_t i = 0; i < node.names.size(); ++i) {
                if (local.vars.count(node.names[i])) continue;
                local.vars[node.names[i]] = node.defaults[i]
                                                ? eval(*node.defaults[i], local)
                                                : Value::undefined("'" + node.names[i] + "' is undefined");
            }
            if (++call_depth_ > kMaxCallDepth) throw RenderError("macro calls nested too deeply");
            const int saved_line = line_;
            std::string out;
            exec(node.body, local, out);
            line_ = saved_line;
            --call_depth_;
            return Value::from(std::move(out));
        }));
    }

    Args eval_args(const Expr& e, Scope& scope) {
        Args args;
        const size_t n_named = e.arg_names.size();
        const size_t n_positional = e.children.size() - 1 - n_named;
        for (size_t i = 0; i < n_positional; ++i) args.positional.push_back(eval(*e.children[1 + i], scope));
        for (size_t i = 0; i < n_named; ++i)
            args.named.emplace_back(e.arg_names[i], eval(*e.children[1 + n_positional + i], scope));
        return args;
    }

    Value eval(const Expr& e, Scope& scope) {
        line_ = e.line;
        switch (e.kind) {
            case Expr::Kind::Literal:
                return e.value;
            case Expr::Kind::Name: {
                const Value* v = scope.find(e.name);
                return v ? *v : Value::undefined("'" + e.name + "' is undefined");
            }
            case Expr::Kind::List:
            case Expr::Kind::Tuple: {
                List items;
                for (const auto& child : e.children) items.push_back(eval(*child, scope));
                return e.kind == Expr::Kind::Tuple ? Value::tuple_of(std::move(items))
                                                   : Value::from(std::move(items));
            }
            case Expr::Kind::Dict: {
                Dict d;
                for (size_t i = 0; i < e.children.size(); i += 2) {
                    const Value key = eval(*e.children[i], scope);
                    d.set(as_string(key, "dict key"), eval(*e.children[i + 1], scope));
                }
                return Value::from(std::move(d));
            }
            case Expr::Kind::Attr:
                return get_attr(eval(*e.children[0], scope), e.name);
            case Expr::Kind::Item: {
                const Value obj = eval(*e.children[0], scope);
                return get_item(obj, eval(*e.children[1], scope));
            }
            case Expr::Kind::Slice: {
                const Value obj = eval(*e.children[0], scope);
                Value bounds[3];
                for (int i = 0; i < 3; ++i)
                    bounds[i] = e.children[1 + i] ? eval(*e.children[1 + i], scope) : Value::none();
                return slice(obj, bounds[0], bounds[1], bounds[2]);
            }
            case Expr::Kind::Call: {
                const Value callee = eval(*e.children[0], scope);
                const Args args = eval_args(e, scope);
                check_defined(callee);
                if (!callee.is(T::Function))
                    throw RenderError("'" + type_name(callee) + "' object is not callable");
                return (*callee.function)(args);
            }
            case Expr::Kind::Filter: {
                const Value operand = eval(*e.children[0], scope);
                const Args args = eval_args(e, scope);
                line_ = e.line;
                return apply_filter(e.name, operand, args);
            }
            case Expr::Kind::Test: {
                const Value operand = eval(*e.children[0], scope);
                const Args args = eval_args(e, scope);
                line_ = e.line;
                return Value::from(apply_test(e.name, operand, args));
            }
            case Expr::Kind::Unary: {
                const Value v = eval(*e.children[0], scope);
                if (e.name == "not") return Value::from(!truthy(v));
                check_defined(v);
                if (!v.is_number())
                    throw RenderError("bad operand type for unary " + e.name + ": '" + type_name(v) + "'");
                if (e.name == "+") return v.is(T::Bool) ? Value::from(as_int(v, "operand")) : v;
                if (v.is(T::Float)) return Value::from(-v.number);
                return Value::from(checked_sub(0, as_int(v, "operand")));
            }
            case Expr::Kind::Binary: {
                const Value left = eval(*e.children[0], scope);
                // and / or return an operand, as in Python, and skip the right one when they can.
                if (e.name == "and") return truthy(left) ? eval(*e.children[1], scope) : left;
                if (e.name == "or") return truthy(left) ? left : eval(*e.children[1], scope);
                const Value right = eval(*e.children[1], scope);
                line_ = e.line;
                return arithmetic(e.name, left, right);
            }
            case Expr::Kind::Compare: {
                Value left = eval(*e.children[0], scope);
                for (size_t i = 0; i < e.ops.size(); ++i) {
                    Value right = eval(*e.children[i + 1], scope);
                    line_ = e.line;
                    if (!compare(e.ops[i], left, right)) return Value::from(false);
                    left = std::move(right);
                }
                return Value::from(true);
            }
            case Expr::Kind::Cond:
                if (truthy(eval(*e.children[1], scope))) return eval(*e.children[0], scope);
                if (e.children[2]) return eval(*e.children[2], scope);
                return Value::undefined(
                    "the inline if-expression evaluated to false and no else section was defined.");
        }
        return Value();
    }

    const std::string& name_;
    Scope root_;
    int line_ = 0;
    int call_depth_ = 0;
};

}  // namespace

std::string render(const Body& body, const Dict& variables, const std::string& name) {
    return Renderer(name).run(body, variables);
}

Template::Template(std::string_view source, std::string name)
    : name_(std::move(name)), body_(std::make_shared<const Body>(parse(source, name_))) {}

std::string Template::render(const nlohmann::ordered_json& variables) const {
    MSLM_CHECK(variables.is_object(), "{}: template variables must be a JSON object", name_);
    const Value vars = from_json(variables);
    return jinja::render(*body_, *vars.dict, name_);
}

}  // namespace mslm::jinja
