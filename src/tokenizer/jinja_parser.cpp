// Template text -> syntax tree. The lexer mirrors jinja2's (lexer.py): the same whitespace rules
// (trim_blocks, lstrip_blocks, '-' and '+' markers, the dropped final newline), which is where
// most of a chat template's output bytes are decided. The parser mirrors jinja2's recursive descent
// (parser.py), so operator precedence and the places where `a if b else c` is allowed match.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <string_view>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/jinja_impl.h"

namespace mslm::jinja {
namespace {

enum class Tok { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };

struct Token {
    Token(Tok k, std::string t, size_t p) : kind(k), text(std::move(t)), pos(p) {}
    Tok kind;
    std::string text;  // Data: the text; Name, Op: the spelling; String: the decoded value
    size_t pos;        // byte offset in the (normalized) source
    int64_t integer = 0;
    double number = 0;
};

// Throws the syntax error at byte `pos` of `src`, located by line and column (1-based; the column
// counts characters).
[[noreturn]] void syntax_error(std::string_view src, const std::string& name, size_t pos,
                               const std::string& what) {
    pos = std::min(pos, src.size());
    const size_t line_start = pos == 0 ? 0 : src.rfind('\n', pos - 1) + 1;
    const auto line = 1 + std::count(src.begin(), src.begin() + static_cast<ptrdiff_t>(pos), '\n');
    const size_t column = 1 + code_points(src.substr(line_start, pos - line_start)).size();
    fail("{}:{}:{}: {}", name, line, column, what);
}

bool space_at(std::string_view s, size_t i, size_t* len) {
    uint32_t cp = 0;
    *len = static_cast<size_t>(utf8::decode(s, i, &cp));
    return is_space(cp);
}

size_t skip_space(std::string_view s, size_t i) {
    size_t len = 0;
    while (i < s.size() && space_at(s, i, &len)) i += len;
    return i;
}

std::string_view rstrip_space(std::string_view s) {
    size_t end = s.size();
    while (end > 0) {
        size_t start = end - 1;
        while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
        size_t len = 0;
        if (!space_at(s, start, &len)) break;
        end = start;
    }
    return s.substr(0, end);
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

class Lexer {
public:
    Lexer(std::string_view src, const std::string& name) : src_(src), name_(name) {}

    std::vector<Token> run() {
        bool line_starting = true;  // lstrip_blocks only strips indentation at the start of a line
        size_t pos = 0;
        while (pos < src_.size()) {
            const size_t tag = find_tag_start(pos);
            if (tag == std::string_view::npos) {
                push(Tok::Data, std::string(src_.substr(pos)), pos);
                break;
            }
            std::string_view text = src_.substr(pos, tag - pos);
            const char kind = src_[tag + 1];
            const char sign =
                tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+') ? src_[tag + 2] : 0;
            if (sign == '-') {
                text = rstrip_space(text);
            } else if (sign != '+' && kind != '{') {
                // lstrip_blocks: a block or comment tag preceded on its line by whitespace only
                // takes that whitespace away.
                const size_t nl = text.rfind('\n');
                const size_t line_start = nl == std::string_view::npos ? 0 : nl + 1;
                if ((line_start > 0 || line_starting) && line_start < text.size() &&
                    skip_space(text, line_start) == text.size())
                    text = text.substr(0, line_start);
            }
            if (!text.empty()) push(Tok::Data, std::string(text), pos);
            pos = tag + 2 + (sign ? 1 : 0);
            if (kind == '#') {
                pos = skip_comment(tag, pos);
            } else {
                push(kind == '{' ? Tok::VarBegin : Tok::BlockBegin, "", tag);
                pos = lex_tag(tag, pos, kind == '%');
            }
            line_starting = src_[pos - 1] == '\n';
        }
        push(Tok::End, "", src_.size());
        return std::move(tokens_);
    }

private:
    void push(Tok kind, std::string text, size_t pos) { tokens_.emplace_back(kind, std::move(text), pos); }

    size_t find_tag_start(size_t pos) const {
        for (size_t i = src_.find('{', pos); i != std::string_view::npos; i = src_.find('{', i + 1)) {
            if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))
                return i;
        }
        return std::string_view::npos;
    }

    // Returns the position after the comment's end marker, with its whitespace rule applied.
    size_t skip_comment(size_t tag, size_t pos) const {
        const size_t end = src_.find("#}", pos);
        if (end == std::string_view::npos) syntax_error(src_, name_, tag, "missing end of comment tag '#}'");
        if (end > pos && src_[end - 1] == '-') return skip_space(src_, end + 2);
        if (end > pos && src_[end - 1] == '+') return end + 2;
        return end + 2 < src_.size() && src_[end + 2] == '\n' ? end + 3 : end + 2;  // trim_blocks
    }

    // Tokens of one {{ }} or {% %} up to and including its end marker; returns the position after it.
    size_t lex_tag(size_t tag, size_t pos, bool block) {
        std::vector<char> closers;  // a '}' closing a dict is not the end of the tag
        while (true) {
            if (pos >= src_.size())
                syntax_error(src_, name_, tag,
                             block ? "missing '%}' to close this tag" : "missing '}}' to close this tag");
            if (closers.empty()) {
                const std::string_view rest = src_.substr(pos);
                const std::string_view end = block ? "%}" : "}}";
                const Tok end_kind = block ? Tok::BlockEnd : Tok::VarEnd;
                if (block && rest.substr(0, 3) == "+%}") {
                    push(end_kind, "", pos);
                    return pos + 3;
                }
                if (rest.size() >= 3 && rest[0] == '-' && rest.substr(1, 2) == end) {
                    push(end_kind, "", pos);
                    return skip_space(src_, pos + 3);
                }
                if (rest.substr(0, 2) == end) {
                    push(end_kind, "", pos);
                    pos += 2;
                    return block && pos < src_.size() && src_[pos] == '\n' ? pos + 1 : pos;  // trim_blocks
                }
            }
            const char c = src_[pos];
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
                ++pos;
            } else if (c >= '0' && c <= '9') {
                pos = lex_number(pos);
            } else if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
                const size_t start = pos;
                while (pos < src_.size() &&
                       (src_[pos] == '_' || std::isalnum(static_cast<unsigned char>(src_[pos]))))
                    ++pos;
                push(Tok::Name, std::string(src_.substr(start, pos - start)), start);
            } else if (c == '\'' || c == '"') {
                pos = lex_string(pos);
            } else {
                pos = lex_operator(pos, closers);
            }
        }
    }

    size_t lex_number(size_t start) {
        size_t pos = start;
        auto digits = [&] {
            while (pos < src_.size() && src_[pos] >= '0' && src_[pos] <= '9') ++pos;
        };
        digits();
        bool is_float = false;
        // `x.0.1` is two integer subscripts, not a float: jinja2's float rule has (?<!\.).
        const bool after_dot = start > 0 && src_[start - 1] == '.';
        if (!after_dot && pos + 1 < src_.size() && src_[pos] == '.' &&
            std::isdigit(static_cast<unsigned char>(src_[pos + 1]))) {
            ++pos;
            digits();
            is_float = true;
        }
        if (!after_dot && pos < src_.size() && (src_[pos] == 'e' || src_[pos] == 'E')) {
            size_t p = pos + 1;
            if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
            if (p < src_.size() && std::isdigit(static_cast<unsigned char>(src_[p]))) {
                pos = p;
                digits();
                is_float = true;
            }
        }
        Token t(is_float ? Tok::Float : Tok::Int, std::string(src_.substr(start, pos - start)), start);
        const char* first = src_.data() + start;
        const char* last = src_.data() + pos;
        const auto res =
            is_float ? std::from_chars(first, last, t.number) : std::from_chars(first, last, t.integer);
        if (res.ec != std::errc()) syntax_error(src_, name_, start, "number out of range: " + t.text);
        tokens_.push_back(std::move(t));
        return pos;
    }

    // A quoted string with Python's escapes (jinja2 decodes them with 'unicode-escape').
    size_t lex_string(size_t start) {
        const char quote = src_[start];
        std::string value;
        size_t pos = start + 1;
        while (true) {
            if (pos >= src_.size()) syntax_error(src_, name_, start, "unterminated string");
            const char c = src_[pos];
            if (c == quote) break;
            if (c != '\\' || pos + 1 >= src_.size()) {
                value += c;
                ++pos;
                continue;
            }
            const char e = src_[pos + 1];
            pos += 2;
            switch (e) {
                case '\n':
                    break;
                case '\\':
                    value += '\\';
                    break;
                case '\'':
                    value += '\'';
                    break;
                case '"':
                    value += '"';
                    break;
                case 'a':
                    value += '\a';
                    break;
                case 'b':
                    value += '\b';
                    break;
                case 'f':
                    value += '\f';
                    break;
                case 'n':
                    value += '\n';
                    break;
                case 'r':
                    value += '\r';
                    break;
                case 't':
                    value += '\t';
                    break;
                case 'v':
                    value += '\v';
                    break;
                case 'x':
                case 'u':
                case 'U': {
                    const int width = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                    uint32_t cp = 0;
                    for (int k = 0; k < width; ++k, ++pos) {
                        const int h = pos < src_.size() ? hex_value(src_[pos]) : -1;
                        if (h < 0)
                            syntax_error(src_, name_, pos, std::string("truncated \\") + e + " escape");
                        cp = cp << 4 | static_cast<uint32_t>(h);
                    }
                    if (cp > 0x10FFFF) syntax_error(src_, name_, pos, "illegal Unicode character");
                    // A lone surrogate has no UTF-8 form.
                    utf8::append_codepoint(cp >= 0xD800 && cp <= 0xDFFF ? 0xFFFD : cp, value);
                    break;
                }
                default:
                    if (e >= '0' && e <= '7') {
                        uint32_t cp = static_cast<uint32_t>(e - '0');
                        for (int k = 0; k < 2 && pos < src_.size() && src_[pos] >= '0' && src_[pos] <= '7';
                             ++k, ++pos)
                            cp = cp * 8 + static_cast<uint32_t>(src_[pos] - '0');
                        utf8::append_codepoint(cp, value);
                    } else {
                        value += '\\';  // Python keeps unknown escapes as written
                        value += e;
                    }
            }
        }
        push(Tok::String, std::move(value), start);
        return pos + 1;
    }

    size_t lex_operator(size_t pos, std::vector<char>& closers) {
        static const std::string_view kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
        for (std::string_view op : kTwo) {
            if (src_.substr(pos, 2) == op) {
                push(Tok::Op, std::string(op), pos);
                return pos + 2;
            }
        }
        const char c = src_[pos];
        if (std::string_view("+-/*%~[](){}><=.:|,;").find(c) == std::string_view::npos) {
            size_t len = static_cast<size_t>(utf8::char_length(static_cast<unsigned char>(c)));
            syntax_error(src_, name_, pos,
                         "unexpected character '" + std::string(src_.substr(pos, len)) + "'");
        }
        if (c == '(' || c == '[' || c == '{') {
            closers.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
        } else if (c == ')' || c == ']' || c == '}') {
            if (closers.empty()) syntax_error(src_, name_, pos, std::string("unexpected '") + c + "'");
            if (closers.back() != c)
                syntax_error(src_, name_, pos,
                             std::string("unexpected '") + c + "', expected '" + closers.back() + "'");
            closers.pop_back();
        }
        push(Tok::Op, std::string(1, c), pos);
        return pos + 1;
    }

    std::string_view src_;
    const std::string& name_;
    std::vector<Token> tokens_;
};

class Parser {
public:
    Parser(std::string_view src, const std::string& name)
        : src_(src), name_(name), tokens_(Lexer(src, name).run()) {
        line_starts_.push_back(0);
        for (size_t i = 0; i < src.size(); ++i)
            if (src[i] == '\n') line_starts_.push_back(i + 1);
    }

    Body parse_template() {
        std::string end;
        return parse_body({}, &end);
    }

private:
    static constexpr int kMaxDepth = 200;  // nesting of expressions and blocks: bounds the recursion

    // Counts nesting while alive.
    struct DepthGuard {
        Parser& p;
        explicit DepthGuard(Parser& parser) : p(parser) {
            if (++p.depth_ > kMaxDepth) p.error(p.cur(), "template nested too deeply");
        }
        ~DepthGuard() { --p.depth_; }
    };

    const Token& cur() const { return tokens_[i_]; }
    const Token& peek() const { return tokens_[std::min(i_ + 1, tokens_.size() - 1)]; }
    void next() {
        if (i_ + 1 < tokens_.size()) ++i_;
    }
    bool at_op(std::string_view op) const { return cur().kind == Tok::Op && cur().text == op; }
    bool at_name(std::string_view n) const { return cur().kind == Tok::Name && cur().text == n; }

    [[noreturn]] void error(const Token& t, const std::string& what) const {
        syntax_error(src_, name_, t.pos, what);
    }

    static std::string describe(const Token& t) {
        switch (t.kind) {
            case Tok::Data:
                return "template text";
            case Tok::VarBegin:
                return "'{{'";
            case Tok::VarEnd:
                return "end of print statement '}}'";
            case Tok::BlockBegin:
                return "'{%'";
            case Tok::BlockEnd:
                return "end of statement '%}'";
            case Tok::String:
                return "string";
            case Tok::Int:
            case Tok::Float:
                return "number " + t.text;
            case Tok::End:
                return "end of template";
            default:
                return "'" + t.text + "'";
        }
    }

    void expect_op(std::string_view op) {
        if (!at_op(op)) error(cur(), "expected '" + std::string(op) + "', got " + describe(cur()));
        next();
    }
    std::string expect_name() {
        if (cur().kind != Tok::Name) error(cur(), "expected a name, got " + describe(cur()));
        std::string n = cur().text;
        next();
        return n;
    }
    void expect_block_end() {
        if (cur().kind != Tok::BlockEnd)
            error(cur(), "expected end of statement '%}', got " + describe(cur()));
        next();
    }

    int line_of(const Token& t) const {
        return static_cast<int>(std::upper_bound(line_starts_.begin(), line_starts_.end(), t.pos) -
                                line_starts_.begin());
    }

    ExprPtr make(Expr::Kind kind, const Token& at) {
        auto e = std::make_unique<Expr>();
        e->kind = kind;
        e->line = line_of(at);
        return e;
    }
    ExprPtr make(Expr::Kind kind, const Token& at, std::string name, std::vector<ExprPtr> children) {
        auto e = make(kind, at);
        e->name = std::move(name);
        e->children = std::move(children);
        return e;
    }

    // Statements up to one of the tags `ends`, whose name is stored in *end (the stream is left
    // after the name), or up to the end of the template when `ends` is empty.
    Body parse_body(std::initializer_list<std::string_view> ends, std::string* end) {
        DepthGuard guard(*this);
        Body body;
        while (true) {
            const Token& t = cur();
            if (t.kind == Tok::Data) {
                Node n(Node::Kind::Text, line_of(t));
                n.text = t.text;
                body.push_back(std::move(n));
                next();
            } else if (t.kind == Tok::VarBegin) {
                next();
                Node n(Node::Kind::Output, line_of(t));
                n.expr = parse_tuple(true, false);
                if (cur().kind != Tok::VarEnd)
                    error(cur(), "expected end of print statement '}}', got " + describe(cur()));
                next();
                body.push_back(std::move(n));
            } else if (t.kind == Tok::BlockBegin) {
                next();
                if (cur().kind != Tok::Name) error(cur(), "expected a tag name, got " + describe(cur()));
                if (std::find(ends.begin(), ends.end(), cur().text) != ends.end()) {
                    *end = cur().text;
                    next();
                    return body;
                }
                parse_statement(body);
            } else {
                if (ends.size() == 0) return body;
                std::string wanted;
                for (std::string_view e : ends)
                    wanted += (wanted.empty() ? "'" : " or '") + std::string(e) + "'";
                error(t, "unexpected end of template, expected " + wanted);
            }
        }
    }

    void parse_statement(Body& body) {
        const Token tag = cur();
        next();
        const int line = line_of(tag);
        if (tag.text == "if") {
            body.push_back(parse_if(line));
        } else if (tag.text == "for") {
            body.push_back(parse_for(line));
        } else if (tag.text == "set") {
            body.push_back(parse_set(line));
        } else if (tag.text == "macro") {
            body.push_back(parse_macro(line));
        } else if (tag.text == "break" || tag.text == "continue") {
            if (loop_depth_ == 0) error(tag, "'" + tag.text + "' outside of a loop");
            expect_block_end();
            body.emplace_back(tag.text == "break" ? Node::Kind::Break : Node::Kind::Continue, line);
        } else if (tag.text == "generation") {
            // transformers' {% generation %} marks assistant text for its token mask; the text
            // renders as is.
            expect_block_end();
            std::string end;
            Body inner = parse_body({"endgeneration"}, &end);
            expect_block_end();
            for (Node& n : inner) body.push_back(std::move(n));
        } else {
            static const std::string_view kEndTags[] = {"elif",   "else",     "endif",        "endfor",
                                                        "endset", "endmacro", "endgeneration"};
            if (std::find(std::begin(kEndTags), std::end(kEndTags), tag.text) != std::end(kEndTags))
                error(tag, "unexpected '" + tag.text + "'");
            error(tag, "unknown or unsupported tag '" + tag.text + "'");
        }
    }

    Node parse_if(int line) {
        Node n(Node::Kind::If, line);
        while (true) {
            ExprPtr condition = parse_tuple(false, false);
            expect_block_end();
            std::string end;
            Body branch = parse_body({"elif", "else", "endif"}, &end);
            n.branches.emplace_back(std::move(condition), std::move(branch));
            if (end == "elif") continue;
            expect_block_end();
            if (end == "else") {
                n.else_body = parse_body({"endif"}, &end);
                expect_block_end();
            }
            return n;
        }
    }

    std::vector<std::string> parse_targets(std::string_view terminator) {
        std::vector<std::string> names{expect_name()};
        while (at_op(",")) {
            next();
            if (at_name(terminator) || at_op(terminator)) break;
            names.push_back(expect_name());
        }
        return names;
    }

    Node parse_for(int line) {
        Node n(Node::Kind::For, line);
        n.names = parse_targets("in");
        if (!at_name("in")) error(cur(), "expected 'in', got " + describe(cur()));
        next();
        n.expr = parse_tuple(false, false);
        if (at_name("if")) {
            next();
            n.filter = parse_expression(true);
        }
        if (at_name("recursive")) error(cur(), "recursive loops are not supported");
        expect_block_end();
        ++loop_depth_;
        std::string end;
        n.body = parse_body({"endfor", "else"}, &end);
        --loop_depth_;
        expect_block_end();
        if (end == "else") {
            n.else_body = parse_body({"endfor"}, &end);
            expect_block_end();
        }
        return n;
    }

    Node parse_set(int line) {
        Node n(Node::Kind::Set, line);
        n.names = parse_targets("=");
        if (n.names.size() == 1 && at_op(".")) {
            next();
            n.attr = expect_name();
        }
        if (at_op("=")) {
            next();
            n.expr = parse_tuple(true, false);
            expect_block_end();
            return n;
        }
        if (n.names.size() > 1 || !n.attr.empty()) error(cur(), "expected '=', got " + describe(cur()));
        if (at_op("|")) error(cur(), "filters on {% set %} blocks are not supported");
        expect_block_end();
        n.kind = Node::Kind::SetBlock;
        std::string end;
        n.body = parse_body({"endset"}, &end);
        expect_block_end();
        return n;
    }

    Node parse_macro(int line) {
        Node n(Node::Kind::Macro, line);
        n.text = expect_name();
        expect_op("(");
        while (!at_op(")")) {
            if (!n.names.empty()) {
                expect_op(",");
                if (at_op(")")) break;
            }
            const Token& at = cur();
            n.names.push_back(expect_name());
            if (at_op("=")) {
                next();
                n.defaults.push_back(parse_expression(true));
            } else {
                if (!n.defaults.empty() && n.defaults.back())
                    error(at, "non-default argument follows default argument");
                n.defaults.push_back(nullptr);
            }
        }
        next();
        expect_block_end();
        const int saved_depth = loop_depth_;
        loop_depth_ = 0;
        std::string end;
        n.body = parse_body({"endmacro"}, &end);
        loop_depth_ = saved_depth;
        expect_block_end();
        return n;
    }

    // Expressions separated by commas make a tuple (a list here).
    ExprPtr parse_tuple(bool with_condexpr, bool explicit_parens) {
        const Token& start = cur();
        std::vector<ExprPtr> items;
        bool is_tuple = false;
        while (true) {
            if (!items.empty()) expect_op(",");
            if (cur().kind == Tok::VarEnd || cur().kind == Tok::BlockEnd || at_op(")")) break;
            items.push_back(parse_expression(with_condexpr));
            if (!at_op(",")) break;
            is_tuple = true;
        }
        if (!is_tuple) {
            if (!items.empty()) return std::move(items[0]);
            if (!explicit_parens) error(cur(), "expected an expression, got " + describe(cur()));
        }
        return make(Expr::Kind::Tuple, start, "", std::move(items));
    }

    ExprPtr parse_expression(bool with_condexpr) {
        DepthGuard guard(*this);
        return with_condexpr ? parse_condexpr() : parse_or();
    }

    ExprPtr parse_condexpr() {
        DepthGuard guard(*this);
        ExprPtr e = parse_or();
        while (at_name("if")) {
            const Token& at = cur();
            next();
            std::vector<ExprPtr> parts;
            parts.push_back(std::move(e));
            parts.push_back(parse_or());
            if (at_name("else")) {
                next();
                parts.push_back(parse_condexpr());
            } else {
                parts.push_back(nullptr);
            }
            e = make(Expr::Kind::Cond, at, "", std::move(parts));
        }
        return e;
    }

    ExprPtr parse_or() {
        ExprPtr left = parse_and();
        while (at_name("or")) {
            const Token& at = cur();
            next();
            std::vector<ExprPtr> parts;
            parts.push_back(std::move(left));
            parts.push_back(parse_and());
            left = make(Expr::Kind::Binary, at, "or", std::move(parts));
        }
        return left;
    }

    ExprPtr parse_and() {
        ExprPtr left = parse_not();
        while (at_name("and")) {
            const Token& at = cur();
            next();
            std::vector<ExprPtr> parts;
            parts.push_back(std::move(left));
            parts.push_back(parse_not());
            left = make(Expr::Kind::Binary, at, "and", std::move(parts));
        }
        return left;
    }

    ExprPtr parse_not() {
        DepthGuard guard(*this);
        if (!at_name("not")) return parse_compare();
        const Token& at = cur();
        next();
        std::vector<ExprPtr> parts;
        parts.push_back(parse_not());
        return make(Expr::Kind::Unary, at, "not", std::move(parts));
    }

    ExprPtr parse_compare() {
        const Token& start = cur();
        ExprPtr first = parse_math1();
        auto e = make(Expr::Kind::Compare, start);
        e->children.push_back(std::move(first));
        while (true) {
            if (cur().kind == Tok::Op &&
                (at_op("==") || at_op("!=") || at_op("<") || at_op("<=") || at_op(">") || at_op(">="))) {
                e->ops.push_back(cur().text);
                next();
            } else if (at_name("in")) {
                e->ops.push_back("in");
                next();
            } else if (at_name("not") && peek().kind == Tok::Name && peek().text == "in") {
                e->ops.push_back("not in");
                next();
                next();
            } else {
                break;
            }
            e->children.push_back(parse_math1());
        }
        if (e->ops.empty()) return std::move(e->children[0]);
        return e;
    }

    // One precedence level of left-associative binary operators.
    template <typename Operand>
    ExprPtr parse_binary(std::initializer_list<std::string_view> ops, Operand operand) {
        ExprPtr left = operand();
        while (cur().kind == Tok::Op && std::find(ops.begin(), ops.end(), cur().text) != ops.end()) {
            const Token& at = cur();
            next();
            std::vector<ExprPtr> parts;
            parts.push_back(std::move(left));
            parts.push_back(operand());
            left = make(Expr::Kind::Binary, at, at.text, std::move(parts));
        }
        return left;
    }

    ExprPtr parse_math1() {
        return parse_binary({"+", "-"}, [this] { return parse_concat(); });
    }
    ExprPtr parse_concat() {
        return parse_binary({"~"}, [this] { return parse_math2(); });
    }
    ExprPtr parse_math2() {
        return parse_binary({"*", "/", "//", "%"}, [this] { return parse_pow(); });
    }
    ExprPtr parse_pow() {
        return parse_binary({"**"}, [this] { return parse_unary(true); });
    }

    // As in jinja2, `-x|f` is `(-x)|f`: a sign binds tighter than the filters after it.
    ExprPtr parse_unary(bool with_filter) {
        DepthGuard guard(*this);
        ExprPtr e;
        if (at_op("-") || at_op("+")) {
            const Token& at = cur();
            next();
            std::vector<ExprPtr> parts;
            parts.push_back(parse_unary(false));
            e = make(Expr::Kind::Unary, at, at.text, std::move(parts));
        } else {
            e = parse_primary();
        }
        e = parse_postfix(std::move(e));
        return with_filter ? parse_filters(std::move(e)) : std::move(e);
    }

    ExprPtr parse_primary() {
        const Token& t = cur();
        switch (t.kind) {
            case Tok::Name: {
                next();
                auto e = make(Expr::Kind::Literal, t);
                if (t.text == "true" || t.text == "True") {
                    e->value = Value::from(true);
                } else if (t.text == "false" || t.text == "False") {
                    e->value = Value::from(false);
                } else if (t.text == "none" || t.text == "None") {
                    e->value = Value::none();
                } else {
                    e->kind = Expr::Kind::Name;
                    e->name = t.text;
                }
                return e;
            }
            case Tok::String: {
                std::string s;
                while (cur().kind == Tok::String) {  // adjacent literals join, as in Python
                    s += cur().text;
                    next();
                }
                auto e = make(Expr::Kind::Literal, t);
                e->value = Value::from(std::move(s));
                return e;
            }
            case Tok::Int:
            case Tok::Float: {
                next();
                auto e = make(Expr::Kind::Literal, t);
                e->value = t.kind == Tok::Int ? Value::from(t.integer) : Value::from(t.number);
                return e;
            }
            case Tok::Op:
                if (t.text == "(") {
                    next();
                    ExprPtr e = parse_tuple(true, true);
                    expect_op(")");
                    return e;
                }
                if (t.text == "[") return parse_list();
                if (t.text == "{") return parse_dict();
                break;
            default:
                break;
        }
        error(t, "unexpected " + describe(t));
    }

    ExprPtr parse_list() {
        auto e = make(Expr::Kind::List, cur());
        next();
        while (!at_op("]")) {
            if (!e->children.empty()) {
                expect_op(",");
                if (at_op("]")) break;
            }
            e->children.push_back(parse_expression(true));
        }
        next();
        return e;
    }

    ExprPtr parse_dict() {
        auto e = make(Expr::Kind::Dict, cur());
        next();
        while (!at_op("}")) {
            if (!e->children.empty()) {
                expect_op(",");
                if (at_op("}")) break;
            }
            e->children.push_back(parse_expression(true));
            expect_op(":");
            e->children.push_back(parse_expression(true));
        }
        next();
        return e;
    }

    ExprPtr parse_postfix(ExprPtr e) {
        while (true) {
            const Token& at = cur();
            if (at_op(".")) {
                next();
                if (cur().kind == Tok::Name) {
                    std::vector<ExprPtr> parts;
                    parts.push_back(std::move(e));
                    e = make(Expr::Kind::Attr, at, cur().text, std::move(parts));
                } else if (cur().kind == Tok::Int) {
                    auto index = make(Expr::Kind::Literal, cur());
                    index->value = Value::from(cur().integer);
                    std::vector<ExprPtr> parts;
                    parts.push_back(std::move(e));
                    parts.push_back(std::move(index));
                    e = make(Expr::Kind::Item, at, "", std::move(parts));
                } else {
                    error(cur(), "expected an attribute name, got " + describe(cur()));
                }
                next();
            } else if (at_op("[")) {
                next();
                e = parse_subscript(std::move(e), at);
                expect_op("]");
            } else if (at_op("(")) {
                e = parse_call(std::move(e), Expr::Kind::Call, "", at);
            } else {
                return e;
            }
        }
    }

    ExprPtr parse_subscript(ExprPtr object, const Token& at) {
        std::vector<ExprPtr> parts;
        parts.push_back(std::move(object));
        if (!at_op(":")) {
            parts.push_back(parse_expression(true));
            if (at_op(",")) error(cur(), "tuple subscripts are not supported");
            if (!at_op(":")) return make(Expr::Kind::Item, at, "", std::move(parts));
        } else {
            parts.push_back(nullptr);
        }
        next();  // the ':'
        parts.push_back(at_op("]") || at_op(":") ? nullptr : parse_expression(true));
        ExprPtr step;
        if (at_op(":")) {
            next();
            if (!at_op("]")) step = parse_expression(true);
        }
        parts.push_back(std::move(step));
        return make(Expr::Kind::Slice, at, "", std::move(parts));
    }

    // `callee(args)`, and the argument lists of filters and tests: positional arguments first,
    // then keywords.
    ExprPtr parse_call(ExprPtr callee, Expr::Kind kind, std::string name, const Token& at) {
        std::vector<ExprPtr> parts;
        parts.push_back(std::move(callee));
        auto e = make(kind, at, std::move(name), std::move(parts));
        if (!at_op("(")) return e;
        next();
        bool first = true;
        while (!at_op(")")) {
            if (!first) {
                expect_op(",");
                if (at_op(")")) break;
            }
            first = false;
            if (at_op("*") || at_op("**")) error(cur(), "*args and **kwargs are not supported");
            if (cur().kind == Tok::Name && peek().kind == Tok::Op && peek().text == "=") {
                e->arg_names.push_back(cur().text);
                next();
                next();
            } else if (!e->arg_names.empty()) {
                error(cur(), "positional argument follows keyword argument");
            }
            e->children.push_back(parse_expression(true));
        }
        next();
        return e;
    }

    ExprPtr parse_filters(ExprPtr e) {
        while (true) {
            const Token& at = cur();
            if (at_op("|")) {
                next();
                std::string name = expect_name();
                e = parse_call(std::move(e), Expr::Kind::Filter, std::move(name), at);
            } else if (at_name("is")) {
                e = parse_test(std::move(e));
            } else if (at_op("(")) {
                e = parse_call(std::move(e), Expr::Kind::Call, "", at);
            } else {
                return e;
            }
        }
    }

    ExprPtr parse_test(ExprPtr e) {
        const Token& at = cur();
        next();  // 'is'
        const bool negated = at_name("not");
        if (negated) next();
        std::string name = expect_name();
        ExprPtr test;
        if (at_op("(")) {
            test = parse_call(std::move(e), Expr::Kind::Test, std::move(name), at);
        } else {
            std::vector<ExprPtr> parts;
            parts.push_back(std::move(e));
            // jinja2 takes one argument without parentheses: `x is divisibleby 3`.
            const Token& t = cur();
            const bool argument = (t.kind == Tok::Name || t.kind == Tok::String || t.kind == Tok::Int ||
                                   t.kind == Tok::Float || at_op("[") || at_op("{")) &&
                                  !at_name("else") && !at_name("or") && !at_name("and");
            if (argument) {
                if (at_name("is")) error(t, "you cannot chain multiple tests with 'is'");
                parts.push_back(parse_postfix(parse_primary()));
            }
            test = make(Expr::Kind::Test, at, std::move(name), std::move(parts));
        }
        if (!negated) return test;
        std::vector<ExprPtr> parts;
        parts.push_back(std::move(test));
        return make(Expr::Kind::Unary, at, "not", std::move(parts));
    }

    std::string_view src_;
    const std::string& name_;
    std::vector<Token> tokens_;
    std::vector<size_t> line_starts_;  // byte offset of each line's first character
    size_t i_ = 0;
    int depth_ = 0;
    int loop_depth_ = 0;
};

}  // namespace

Body parse(std::string_view source, const std::string& name) {
    // jinja2's lexer: every line break becomes '\n', and one final newline is dropped
    // (keep_trailing_newline=False). Invalid UTF-8 is replaced, as Python's decode would.
    std::string src;
    src.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
        if (source[i] == '\r') {
            src += '\n';
            if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
        } else {
            src += source[i];
        }
    }
    if (!src.empty() && src.back() == '\n') src.pop_back();
    utf8::replace_invalid(src);
    return Parser(src, name).parse_template();
}

}  // namespace mslm::jinja
