// A Jinja2 interpreter for the part of the language that Hugging Face chat templates use. It renders
// byte-identically to jinja2 configured as transformers configures it for apply_chat_template
// (ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the loopcontrols extension,
// plus transformers' tojson, raise_exception, strftime_now and namespace); tests/unit/
// test_chat_template.cpp pins that against output recorded from jinja2 itself. Written here
// because no C++ Jinja2 implementation is packaged in Debian.
//
// Supported:
//   tags        {{ }}, {% if/elif/else %}, {% for x in xs [if cond] %} with else, loop.index,
//               index0, revindex, revindex0, first, last, length, previtem, nextitem, cycle();
//               {% set x = e %}, {% set ns.attr = e %}, {% set x %}...{% endset %},
//               {% macro %}, {% break %}, {% continue %}, {% generation %} (transformers'
//               assistant-mask tag, rendered as its body), comments, whitespace control (-, +)
//   expressions literals (strings with Python escapes, integers, floats, true/false/none in both
//               cases, lists, tuples, dicts), attribute and item access, slices, calls with
//               keyword arguments, + - * / // % ** ~, comparisons (chained), and or not, in,
//               not in, `a if c else b`, filters, tests
//   filters     abs capitalize count default (d) first float int items join last length list
//               lower map reject rejectattr replace reverse select selectattr sort string title
//               tojson trim upper
//   tests       defined undefined none boolean true false integer float number string mapping
//               sequence iterable callable odd even divisibleby eq equalto ne lt lessthan le gt
//               greaterthan ge in
//   methods     str: strip lstrip rstrip startswith endswith split upper lower title
//               capitalize replace; dict: items keys values get
//   globals     range, namespace, dict, raise_exception (throws mslm::Error with the template's
//               message, unprefixed), strftime_now
//   undefined   jinja2's default Undefined: prints as "", is false, iterates as empty, has length
//               0; using its attributes, calling it or computing with it is an error
// Not supported (a template using them fails with an error naming the construct): template
// inheritance and includes, {% raw %}, {% filter %}, {% call %}, recursive loops, *args and
// **kwargs in calls, '%' string formatting, filters and tests not listed above (the error comes
// when the template reaches them, not when it loads).
// Known differences, none of which changes what a working template renders:
//   - select, reject, map, items and reverse return lists where jinja2 returns lazy iterators, so
//     e.g. `xs|select|length` works here and fails in jinja2;
//   - jinja2 folds constant subexpressions at compile time, so `{{ (1)[1:] }}` renders "" there
//     and fails here (slicing a variable that holds a number fails in both);
//   - str.lower/upper use utf8proc's simple case mappings, Python's the full ones (they differ for
//     a few characters, e.g. U+0130); dict.items() prints as a list of tuples, not dict_items(...).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace mslm::jinja {

struct Node;

class Template {
public:
    // Parses `source`. `name` identifies the template in errors: a parse error reads
    // "<name>:<line>:<column>: <what>".
    Template(std::string_view source, std::string name);

    // Renders with `variables` (a JSON object) as the template's variables; objects keep their key
    // order. Throws mslm::Error "<name>:<line>: <what>" for an error of the template, or the bare
    // message the template passed to raise_exception().
    std::string render(const nlohmann::ordered_json& variables) const;

    const std::string& name() const { return name_; }

private:
    std::string name_;
    std::shared_ptr<const std::vector<Node>> body_;
};

}  // namespace mslm::jinja
