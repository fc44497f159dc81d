// Python semantics of template values: what jinja2 inherits from Python's str(), repr(), ==, <, len()
// and json.dumps, which decide the bytes a chat template renders.
#include <utf8proc.h>

#include <algorithm>
#include <charconv>
#include <cmath>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/jinja_impl.h"

namespace mslm::jinja {

Value Value::undefined(std::string why) {
    Value v;
    v.string = std::move(why);
    return v;
}
Value Value::none() {
    Value v;
    v.type = Type::None;
    return v;
}
Value Value::from(bool b) {
    Value v;
    v.type = Type::Bool;
    v.boolean = b;
    return v;
}
Value Value::from(int64_t i) {
    Value v;
    v.type = Type::Int;
    v.integer = i;
    return v;
}
Value Value::from(double d) {
    Value v;
    v.type = Type::Float;
    v.number = d;
    return v;
}
Value Value::from(std::string s) {
    Value v;
    v.type = Type::String;
    v.string = std::move(s);
    return v;
}
Value Value::from(List items) {
    Value v;
    v.type = Type::List;
    v.list = std::make_shared<const List>(std::move(items));
    return v;
}
Value Value::tuple_of(List items) {
    Value v = from(std::move(items));
    v.tuple = true;
    return v;
}
Value Value::from(Dict d) {
    Value v;
    v.type = Type::Dict;
    v.dict = std::make_shared<Dict>(std::move(d));
    return v;
}
Value Value::namespace_of(Dict d) {
    Value v = from(std::move(d));
    v.type = Type::Namespace;
    return v;
}
Value Value::from(Function f) {
    Value v;
    v.type = Type::Function;
    v.function = std::make_shared<const Function>(std::move(f));
    return v;
}

const Value* Dict::find(std::string_view key) const {
    for (const auto& [k, v] : entries)
        if (k == key) return &v;
    return nullptr;
}

void Dict::set(const std::string& key, Value value) {
    for (auto& [k, v] : entries) {
        if (k == key) {
            v = std::move(value);
            return;
        }
    }
    entries.emplace_back(key, std::move(value));
}

bool truthy(const Value& v) {
    switch (v.type) {
        case Value::Type::Undefined:
        case Value::Type::None:
            return false;
        case Value::Type::Bool:
            return v.boolean;
        case Value::Type::Int:
            return v.integer != 0;
        case Value::Type::Float:
            return v.number != 0;
        case Value::Type::String:
            return !v.string.empty();
        case Value::Type::List:
            return !v.list->empty();
        case Value::Type::Dict:
            return !v.dict->entries.empty();
        case Value::Type::Namespace:
        case Value::Type::Function:
            return true;
    }
    return false;
}

std::string type_name(const Value& v) {
    switch (v.type) {
        case Value::Type::Undefined:
            return "Undefined";
        case Value::Type::None:
            return "NoneType";
        case Value::Type::Bool:
            return "bool";
        case Value::Type::Int:
            return "int";
        case Value::Type::Float:
            return "float";
        case Value::Type::String:
            return "str";
        case Value::Type::List:
            return v.tuple ? "tuple" : "list";
        case Value::Type::Dict:
            return "dict";
        case Value::Type::Namespace:
            return "Namespace";
        case Value::Type::Function:
            return "function";
    }
    return "?";
}

std::string format_float(double d) {
    if (std::isnan(d)) return "nan";
    if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
    // The shortest digits that round-trip (what Python's repr picks), laid out by Python's rule:
    // positional for decimal exponents in [-4, 16), scientific with a 2-digit exponent otherwise.
    char buf[64];
    const auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
    const std::string_view sci(buf, static_cast<size_t>(res.ptr - buf));
    const size_t e_pos = sci.find('e');
    std::string digits;
    for (char c : sci.substr(0, e_pos))
        if (c >= '0' && c <= '9') digits += c;
    int exp = 0;
    std::from_chars(sci.data() + e_pos + (sci[e_pos + 1] == '+' ? 2 : 1), sci.data() + sci.size(), exp);
    std::string out = sci[0] == '-' ? "-" : "";
    const int n = static_cast<int>(digits.size());
    if (exp >= -4 && exp < 16) {
        if (exp < 0) {
            out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
        } else if (n <= exp + 1) {
            out += digits + std::string(static_cast<size_t>(exp + 1 - n), '0') + ".0";
        } else {
            out += digits.substr(0, static_cast<size_t>(exp + 1)) + "." +
                   digits.substr(static_cast<size_t>(exp + 1));
        }
        return out;
    }
    out += digits.substr(0, 1);
    if (n > 1) out += "." + digits.substr(1);
    out += exp < 0 ? "e-" : "e+";
    const std::string mag = std::to_string(std::abs(exp));
    return out + (mag.size() < 2 ? "0" : "") + mag;
}

namespace {

void append_hex(std::string& out, uint32_t cp, int width) {
    static const char* const kHex = "0123456789abcdef";
    for (int shift = 4 * (width - 1); shift >= 0; shift -= 4) out += kHex[cp >> shift & 0xF];
}

// str.isprintable: everything but the categories Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs (space aside).
bool is_printable(uint32_t cp) {
    if (cp == ' ') return true;
    switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
        case UTF8PROC_CATEGORY_CC:
        case UTF8PROC_CATEGORY_CF:
        case UTF8PROC_CATEGORY_CS:
        case UTF8PROC_CATEGORY_CO:
        case UTF8PROC_CATEGORY_CN:
        case UTF8PROC_CATEGORY_ZL:
        case UTF8PROC_CATEGORY_ZP:
        case UTF8PROC_CATEGORY_ZS:
            return false;
        default:
            return true;
    }
}

std::string repr_string(std::string_view s) {
    const char quote =
        s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos ? '"' : '\'';
    std::string out(1, quote);
    for (size_t i = 0; i < s.size();) {
        uint32_t cp = 0;
        const int len = utf8::decode(s, i, &cp);
        if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
            out += '\\';
            out += static_cast<char>(cp);
        } else if (cp == '\n') {
            out += "\\n";
        } else if (cp == '\r') {
            out += "\\r";
        } else if (cp == '\t') {
            out += "\\t";
        } else if (!is_printable(cp)) {
            out += cp <= 0xFF ? "\\x" : cp <= 0xFFFF ? "\\u" : "\\U";
            append_hex(out, cp, cp <= 0xFF ? 2 : cp <= 0xFFFF ? 4 : 8);
        } else {
            out.append(s.substr(i, static_cast<size_t>(len)));
        }
        i += static_cast<size_t>(len);
    }
    return out + quote;
}

void append_json_string(std::string& out, std::string_view s, bool ensure_ascii) {
    out += '"';
    for (size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        if (ensure_ascii && static_cast<unsigned char>(c) >= 0x80) {
            // An escape per character (a surrogate pair above U+FFFF), as json.dumps writes it.
            uint32_t cp = 0;
            i += static_cast<size_t>(utf8::decode(s, i, &cp)) - 1;
            if (cp > 0xFFFF) {
                cp -= 0x10000;
                out += "\\u";
                append_hex(out, 0xD800 + (cp >> 10), 4);
                cp = 0xDC00 + (cp & 0x3FF);
            }
            out += "\\u";
            append_hex(out, cp, 4);
            continue;
        }
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            case '\b':
                out += "\\b";
                break;
            case '\f':
                out += "\\f";
                break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    out += "\\u";
                    append_hex(out, static_cast<unsigned char>(c), 4);
                } else {
                    out += c;
                }
        }
    }
    out += '"';
}

struct JsonWriter {
    int indent;
    std::string_view item_sep, key_sep;
    bool sort_keys;
    bool ensure_ascii;
    std::string out;

    void newline(int level) {
        if (indent < 0) return;
        out += '\n';
        out.append(static_cast<size_t>(indent * level), ' ');
    }

    void write(const Value& v, int level) {
        switch (v.type) {
            case Value::Type::None:
                out += "null";
                return;
            case Value::Type::Bool:
                out += v.boolean ? "true" : "false";
                return;
            case Value::Type::Int:
                out += std::to_string(v.integer);
                return;
            case Value::Type::Float:
                if (std::isnan(v.number))
                    out += "NaN";
                else if (std::isinf(v.number))
                    out += v.number < 0 ? "-Infinity" : "Infinity";
                else
                    out += format_float(v.number);
                return;
            case Value::Type::String:
                append_json_string(out, v.string, ensure_ascii);
                return;
            case Value::Type::List: {
                if (v.list->empty()) {
                    out += "[]";
                    return;
                }
                out += '[';
                for (size_t i = 0; i < v.list->size(); ++i) {
                    if (i > 0) out += item_sep;
                    newline(level + 1);
                    write((*v.list)[i], level + 1);
                }
                newline(level);
                out += ']';
                return;
            }
            case Value::Type::Dict: {
                if (v.dict->entries.empty()) {
                    out += "{}";
                    return;
                }
                std::vector<const std::pair<std::string, Value>*> entries;
                for (const auto& e : v.dict->entries) entries.push_back(&e);
                if (sort_keys)
                    std::stable_sort(entries.begin(), entries.end(),
                                     [](const auto* a, const auto* b) { return a->first < b->first; });
                out += '{';
                for (size_t i = 0; i < entries.size(); ++i) {
                    if (i > 0) out += item_sep;
                    newline(level + 1);
                    append_json_string(out, entries[i]->first, ensure_ascii);
                    out += key_sep;
                    write(entries[i]->second, level + 1);
                }
                newline(level);
                out += '}';
                return;
            }
            default:
                throw RenderError("Object of type " + type_name(v) + " is not JSON serializable");
        }
    }
};

}  // namespace

std::string to_str(const Value& v) {
    switch (v.type) {
        case Value::Type::Undefined:
            return "";
        case Value::Type::String:
            return v.string;
        case Value::Type::Namespace: {
            Value d = v;
            d.type = Value::Type::Dict;
            return "<Namespace " + repr(d) + ">";
        }
        default:
            return repr(v);
    }
}

std::string repr(const Value& v) {
    switch (v.type) {
        case Value::Type::Undefined:
            return "Undefined";
        case Value::Type::None:
            return "None";
        case Value::Type::Bool:
            return v.boolean ? "True" : "False";
        case Value::Type::Int:
            return std::to_string(v.integer);
        case Value::Type::Float:
            return format_float(v.number);
        case Value::Type::String:
            return repr_string(v.string);
        case Value::Type::List: {
            std::string out = v.tuple ? "(" : "[";
            for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + repr((*v.list)[i]);
            if (v.tuple) return out + (v.list->size() == 1 ? ",)" : ")");
            return out + "]";
        }
        case Value::Type::Dict: {
            std::string out = "{";
            for (size_t i = 0; i < v.dict->entries.size(); ++i) {
                const auto& [key, item] = v.dict->entries[i];
                out += (i ? ", " : "") + repr_string(key) + ": " + repr(item);
            }
            return out + "}";
        }
        case Value::Type::Namespace:
            return to_str(v);
        case Value::Type::Function:
            return "<function>";
    }
    return "";
}

bool equals(const Value& a, const Value& b) {
    using T = Value::Type;
    if (a.is_number() && b.is_number()) {
        if (a.is(T::Float) || b.is(T::Float)) {
            auto as_double = [](const Value& v) {
                return v.is(T::Float) ? v.number : static_cast<double>(v.is(T::Bool) ? v.boolean : v.integer);
            };
            return as_double(a) == as_double(b);
        }
        return (a.is(T::Bool) ? a.boolean : a.integer) == (b.is(T::Bool) ? b.boolean : b.integer);
    }
    if (a.type != b.type) return false;
    switch (a.type) {
        case T::Undefined:
        case T::None:
            return true;
        case T::String:
            return a.string == b.string;
        case T::List:
            return a.tuple == b.tuple && a.list->size() == b.list->size() &&
                   std::equal(a.list->begin(), a.list->end(), b.list->begin(), equals);
        case T::Dict:
            if (a.dict->entries.size() != b.dict->entries.size()) return false;
            for (const auto& [key, item] : a.dict->entries) {
                const Value* other = b.dict->find(key);
                if (!other || !equals(item, *other)) return false;
            }
            return true;
        case T::Namespace:
            return a.dict == b.dict;
        case T::Function:
            return a.function == b.function;
        default:
            return false;
    }
}

bool less(const Value& a, const Value& b) {
    using T = Value::Type;
    check_defined(a);
    check_defined(b);
    if (a.is_number() && b.is_number()) {
        if (a.is(T::Float) || b.is(T::Float)) {
            auto as_double = [](const Value& v) {
                return v.is(T::Float) ? v.number : static_cast<double>(v.is(T::Bool) ? v.boolean : v.integer);
            };
            return as_double(a) < as_double(b);
        }
        return (a.is(T::Bool) ? a.boolean : a.integer) < (b.is(T::Bool) ? b.boolean : b.integer);
    }
    // UTF-8 byte order is code point order, which is Python's string order.
    if (a.is(T::String) && b.is(T::String)) return a.string < b.string;
    if (a.is(T::List) && b.is(T::List) && a.tuple == b.tuple) {
        const size_t n = std::min(a.list->size(), b.list->size());
        for (size_t i = 0; i < n; ++i)
            if (!equals((*a.list)[i], (*b.list)[i])) return less((*a.list)[i], (*b.list)[i]);
        return a.list->size() < b.list->size();
    }
    throw RenderError("'<' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) +
                      "'");
}

std::string to_json(const Value& v, int indent, std::string_view item_sep, std::string_view key_sep,
                    bool sort_keys, bool ensure_ascii) {
    JsonWriter writer{indent, item_sep, key_sep, sort_keys, ensure_ascii, {}};
    writer.write(v, 0);
    return std::move(writer.out);
}

Value from_json(const nlohmann::ordered_json& j) {
    using J = nlohmann::ordered_json::value_t;
    switch (j.type()) {
        case J::null:
            return Value::none();
        case J::boolean:
            return Value::from(j.get<bool>());
        case J::number_integer:
            return Value::from(j.get<int64_t>());
        case J::number_unsigned: {
            const auto u = j.get<uint64_t>();
            if (u > static_cast<uint64_t>(INT64_MAX)) return Value::from(static_cast<double>(u));
            return Value::from(static_cast<int64_t>(u));
        }
        case J::number_float:
            return Value::from(j.get<double>());
        case J::string: {
            // Python strings hold no invalid UTF-8: replace it as bytes.decode(errors='replace') does.
            std::string s = j.get<std::string>();
            utf8::replace_invalid(s);
            return Value::from(std::move(s));
        }
        case J::array: {
            List items;
            for (const auto& item : j) items.push_back(from_json(item));
            return Value::from(std::move(items));
        }
        case J::object: {
            Dict d;
            for (const auto& [key, item] : j.items()) {
                std::string k = key;
                utf8::replace_invalid(k);
                d.set(k, from_json(item));
            }
            return Value::from(std::move(d));
        }
        default:
            fail("template variables must be JSON values (got {})", j.type_name());
    }
}

List iterate(const Value& v) {
    switch (v.type) {
        case Value::Type::Undefined:
            return {};
        case Value::Type::List:
            return *v.list;
        case Value::Type::Dict: {
            List keys;
            for (const auto& entry : v.dict->entries) keys.push_back(Value::from(entry.first));
            return keys;
        }
        case Value::Type::String: {
            List chars;
            for (size_t i = 0; i < v.string.size();) {
                const size_t len =
                    static_cast<size_t>(utf8::char_length(static_cast<unsigned char>(v.string[i])));
                chars.push_back(Value::from(v.string.substr(i, len)));
                i += len;
            }
            return chars;
        }
        default:
            throw RenderError("'" + type_name(v) + "' object is not iterable");
    }
}

int64_t length(const Value& v) {
    switch (v.type) {
        case Value::Type::Undefined:
            return 0;
        case Value::Type::String:
            return static_cast<int64_t>(code_points(v.string).size());
        case Value::Type::List:
            return static_cast<int64_t>(v.list->size());
        case Value::Type::Dict:
            return static_cast<int64_t>(v.dict->entries.size());
        default:
            throw RenderError("object of type '" + type_name(v) + "' has no len()");
    }
}

void check_defined(const Value& v) {
    if (v.is(Value::Type::Undefined)) throw RenderError(v.string);
}

std::vector<uint32_t> code_points(std::string_view s) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        uint32_t cp = 0;
        i += static_cast<size_t>(utf8::decode(s, i, &cp));
        out.push_back(cp);
    }
    return out;
}

std::string from_code_points(const uint32_t* begin, const uint32_t* end) {
    std::string out;
    for (const uint32_t* p = begin; p != end; ++p) utf8::append_codepoint(*p, out);
    return out;
}

bool is_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

}  // namespace mslm::jinja
