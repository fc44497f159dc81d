// Document sources: spec parsing, each format and split, compression, path resolution, every
// bad-input error, UTF-8 repair against Python, and streaming a large file in bounded memory.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "data/source.h"
#include "core/utf8.h"
#include "test_util.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

std::string test_dir() { return test::fresh_test_dir("mslm_src"); }

void write_file(const std::string& path, const std::string& bytes) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << path;
}

std::string gzip_bytes(const std::string& data) {
    z_stream z{};
    EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);  // +16: gzip header
    std::string out(deflateBound(&z, data.size()) + 32, '\0');
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    z.avail_in = static_cast<uInt>(data.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = static_cast<uInt>(out.size());
    EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

std::string zstd_bytes(const std::string& data) {
    std::string out(ZSTD_compressBound(data.size()), '\0');
    const size_t n = ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3);
    EXPECT_FALSE(ZSTD_isError(n));
    out.resize(n);
    return out;
}

std::vector<Document> read_all(const SourceSpec& spec, const ReadOptions& opt = {}) {
    auto reader = open_source(spec, opt);
    std::vector<Document> docs;
    Document doc;
    while (reader->next(doc)) docs.push_back(doc);
    return docs;
}

std::vector<std::string> texts(const std::vector<Document>& docs) {
    std::vector<std::string> out;
    for (const auto& d : docs) out.push_back(d.text);
    return out;
}

std::vector<std::string> read_texts(const std::string& path, const std::string& options = "",
                                    const ReadOptions& opt = {}) {
    return texts(read_all(parse_source_spec(options.empty() ? path : path + ":" + options), opt));
}

// Runs f and expects an mslm::Error whose one-line message contains every phrase.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& phrases) {
    try {
        f();
        ADD_FAILURE() << "no error; expected one containing '" << phrases.front() << "'";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
        for (const auto& p : phrases)
            EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    }
}

void expect_read_error(const std::string& path, const std::string& options,
                       const std::vector<std::string>& phrases, const ReadOptions& opt = {}) {
    expect_error([&] { read_texts(path, options, opt); }, phrases);
}

using Strings = std::vector<std::string>;

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST(DataSourceSpec, PathOnlyTakesDefaults) {
    const SourceSpec s = parse_source_spec("data/wiki.jsonl");
    EXPECT_EQ(s.path, "data/wiki.jsonl");
    EXPECT_EQ(s.format, SourceFormat::Auto);
    EXPECT_EQ(s.txt_split, TxtSplit::File);
    EXPECT_EQ(s.field, "text");
    EXPECT_EQ(s.weight, 1.0);
    EXPECT_EQ(s.name, "");
}

TEST(DataSourceSpec, AllKeys) {
    const SourceSpec s =
        parse_source_spec("wiki/**/*.jsonl.gz:format=jsonl,split=line,field=meta.text,weight=2.5,name=wiki");
    EXPECT_EQ(s.path, "wiki/**/*.jsonl.gz");
    EXPECT_EQ(s.format, SourceFormat::Jsonl);
    EXPECT_EQ(s.txt_split, TxtSplit::Line);
    EXPECT_EQ(s.field, "meta.text");
    EXPECT_EQ(s.weight, 2.5);
    EXPECT_EQ(s.name, "wiki");
    EXPECT_EQ(parse_source_spec("a.txt:format=txt,split=block").txt_split, TxtSplit::Block);
    EXPECT_EQ(parse_source_spec("a:format=json").format, SourceFormat::Json);
    EXPECT_EQ(parse_source_spec("a.txt:format=auto").format, SourceFormat::Auto);
}

TEST(DataSourceSpec, ColonsInPaths) {
    // The options start after the last ':' whose suffix reads as key=value pairs.
    EXPECT_EQ(parse_source_spec("C:/corpus/a.txt").path, "C:/corpus/a.txt");
    EXPECT_EQ(parse_source_spec("s3:bucket/x.txt").path, "s3:bucket/x.txt");
    SourceSpec s = parse_source_spec("odd:dir/a.txt:weight=3");
    EXPECT_EQ(s.path, "odd:dir/a.txt");
    EXPECT_EQ(s.weight, 3.0);
    s = parse_source_spec("a.txt:name=web:en,weight=2");
    EXPECT_EQ(s.path, "a.txt");
    EXPECT_EQ(s.name, "web:en");
    s = parse_source_spec("a.txt:weight=2,name=web:en");
    EXPECT_EQ(s.path, "a.txt");
    EXPECT_EQ(s.name, "web:en");
    // A trailing ':' (empty option list) keeps a path that would otherwise read as options.
    s = parse_source_spec("strange:weight=2:");
    EXPECT_EQ(s.path, "strange:weight=2");
    EXPECT_EQ(s.weight, 1.0);
}

TEST(DataSourceSpec, ErrorsNameTheSpec) {
    const auto bad = [](const std::string& spec, const std::string& phrase) {
        expect_error([&] { parse_source_spec(spec); }, {"'" + spec + "'", phrase});
    };
    bad("a.txt:fromat=txt", "unknown key 'fromat'");
    bad("a.txt:format=csv", "bad format 'csv'");
    bad("a.txt:split=para", "bad split 'para'");
    bad("a.txt:weight=0", "bad weight '0'");
    bad("a.txt:weight=-1", "bad weight");
    bad("a.txt:weight=abc", "bad weight");
    bad("a.txt:weight=2x", "bad weight");
    bad("a.txt:weight=nan", "bad weight");
    bad("a.txt:weight=inf", "bad weight");
    bad("a.txt:weight=", "bad weight");
    bad("a.txt:field=", "bad field");
    bad("a.txt:name=", "bad name");
    bad("a.txt:weight=1,weight=2", "given twice");
    bad(":weight=2", "empty path");
    bad("", "empty path");
}

// ---------------------------------------------------------------------------------------------

TEST(DataSourceTxt, DocumentPerFile) {
    const std::string dir = test_dir();
    write_file(dir + "/b.txt", "second\n\nfile\n");
    write_file(dir + "/a.txt", "first file\nline two");
    write_file(dir + "/c.txt", " \n\t\n");  // blank: no document
    const auto docs = read_all(parse_source_spec(dir));
    ASSERT_EQ(docs.size(), 2u);
    EXPECT_EQ(docs[0].text, "first file\nline two");
    EXPECT_EQ(docs[0].origin, dir + "/a.txt");
    EXPECT_EQ(docs[1].text, "second\n\nfile\n");
}

TEST(DataSourceTxt, BlankLineBlocks) {
    const std::string dir = test_dir();
    write_file(dir + "/a.txt", "\n\n  indented first\nsecond line\n \n\t\n\nnext\r\nblock\r\n\r\nlast");
    const auto docs = read_all(parse_source_spec(dir + "/a.txt:split=block"));
    ASSERT_EQ(docs.size(), 3u);
    EXPECT_EQ(docs[0].text, "  indented first\nsecond line");
    EXPECT_EQ(docs[0].origin, dir + "/a.txt:3");
    EXPECT_EQ(docs[1].text, "next\nblock");
    EXPECT_EQ(docs[1].origin, dir + "/a.txt:8");
    EXPECT_EQ(docs[2].text, "last");
    EXPECT_EQ(docs[2].origin, dir + "/a.txt:11");
}

TEST(DataSourceTxt, FortuneEntries) {
    const std::string dir = test_dir();
    // Blank lines inside an entry stay; those around it, empty entries and CRLF do not.
    write_file(dir + "/cookie", "%\nFirst saying,\n  by someone.\n%\n\nTwo\n\n\nparagraphs\n\n%\n%\r\nlast\r\n%\n");
    const auto docs = read_all(parse_source_spec(dir + "/cookie:format=txt,split=fortune"));
    ASSERT_EQ(docs.size(), 3u);
    EXPECT_EQ(docs[0].text, "First saying,\n  by someone.");
    EXPECT_EQ(docs[0].origin, dir + "/cookie:2");
    EXPECT_EQ(docs[1].text, "Two\n\n\nparagraphs");
    EXPECT_EQ(docs[1].origin, dir + "/cookie:6");
    EXPECT_EQ(docs[2].text, "last");
    EXPECT_EQ(parse_source_spec("a:split=fortune").txt_split, TxtSplit::Percent);
}

TEST(DataSourceTxt, LinePerDocument) {
    const std::string dir = test_dir();
    write_file(dir + "/a.txt", "\xEF\xBB\xBFone\n\n   \ntwo  \r\nthree");  // BOM, blank lines, CRLF
    const auto docs = read_all(parse_source_spec(dir + "/a.txt:split=line"));
    ASSERT_EQ(docs.size(), 3u);
    EXPECT_EQ(texts(docs), (Strings{"one", "two  ", "three"}));
    EXPECT_EQ(docs[0].origin, dir + "/a.txt:1");
    EXPECT_EQ(docs[1].origin, dir + "/a.txt:4");
    EXPECT_EQ(docs[2].origin, dir + "/a.txt:5");
}

TEST(DataSourceJsonl, DefaultFieldBlankLinesAndEscapes) {
    const std::string dir = test_dir();
    write_file(dir + "/a.jsonl",
               "{\"id\": 1, \"text\": \"caf\\u00e9\\nbar\", \"tags\": [\"text\", {\"text\": \"no\"}]}\n"
               "\n"
               "   \n"
               "{\"text\": \"\xF0\x9F\x98\x80 \\\"q\\\"\"}\r\n"
               "{\"meta\": {\"text\": \"inner\"}, \"text\": \"outer\"}");
    const auto docs = read_all(parse_source_spec(dir + "/a.jsonl"));
    ASSERT_EQ(docs.size(), 3u);
    EXPECT_EQ(docs[0].text, "caf\xC3\xA9\nbar");
    EXPECT_EQ(docs[0].origin, dir + "/a.jsonl:1");
    EXPECT_EQ(docs[1].text, "\xF0\x9F\x98\x80 \"q\"");
    EXPECT_EQ(docs[1].origin, dir + "/a.jsonl:4");
    EXPECT_EQ(docs[2].text, "outer");
}

TEST(DataSourceJsonl, DottedField) {
    const std::string dir = test_dir();
    write_file(dir + "/a.jsonl",
               "{\"text\": \"top\", \"meta\": {\"lang\": \"en\", \"text\": \"deep\", \"x\": {\"text\": "
               "\"deeper\"}}}\n"
               "{\"meta\": [{\"text\": \"in array\"}], \"text\": \"t\"}\n");
    const std::string path = dir + "/a.jsonl";
    EXPECT_EQ(read_texts(path, "field=meta.text,split=line", {.utf8 = Utf8Policy::Replace, .skip_bad = true}),
              (Strings{"deep"}));
    EXPECT_EQ(read_texts(path, "field=meta.x.text", {.utf8 = Utf8Policy::Replace, .skip_bad = true}),
              (Strings{"deeper"}));
    expect_read_error(path, "field=meta.text", {path + ":2: no string field 'meta.text'"});
}

TEST(DataSourceJson, TopLevelArray) {
    const std::string dir = test_dir();
    write_file(dir + "/a.json",
               "\n[\n  {\"text\": \"one\", \"n\": [1, {\"text\": \"x\"}]},\n  {\"id\": \"]\",\n"
               "   \"text\": \"two, with ] and }\"}\n]\n");
    const auto docs = read_all(parse_source_spec(dir + "/a.json"));
    ASSERT_EQ(docs.size(), 2u);
    EXPECT_EQ(docs[0].text, "one");
    EXPECT_EQ(docs[0].origin, dir + "/a.json:3");
    EXPECT_EQ(docs[1].text, "two, with ] and }");
    EXPECT_EQ(docs[1].origin, dir + "/a.json:4");
    write_file(dir + "/empty.json", "[]");
    write_file(dir + "/b.json", "[{\"text\":\"b\"}]");
    EXPECT_EQ(read_texts(dir + "/*.json"), (Strings{"one", "two, with ] and }", "b"}));
}

TEST(DataSourceJson, ObjectWithOneArrayMember) {
    const std::string dir = test_dir();
    write_file(
        dir + "/a.json",
        "{\"version\": \"1.0\", \"meta\": {\"n\": 2}, \"data\": [{\"body\": \"x\"}, {\"body\": \"y\"}],"
        " \"license\": null}");
    EXPECT_EQ(read_texts(dir + "/a.json", "field=body"), (Strings{"x", "y"}));
}

TEST(DataSourceJson, StructureErrors) {
    const std::string dir = test_dir();
    const auto bad = [&](const std::string& name, const std::string& body, const std::string& phrase) {
        write_file(dir + "/" + name, body);
        expect_read_error(dir + "/" + name, "", {dir + "/" + name + ":", phrase});
    };
    bad("scalar.json", "\"text\"", "expected a JSON array or an object with one array member");
    bad("noarray.json", "{\"a\": 1}", "an object without an array member");
    bad("two.json", "{\"a\": [{\"text\":\"x\"}], \"b\": []}", "more than one array member");
    bad("comma.json", "[{\"text\":\"x\"} {\"text\":\"y\"}]", "expected ',' or ']'");
    bad("trailing.json", "[{\"text\":\"x\"},]", "unexpected ']'");
    bad("after.json", "[{\"text\":\"x\"}] []", "unexpected data after the top-level value");
    bad("cut.json", "[{\"text\":\"x\"", "unexpected end of file");
    // An element that is not valid JSON is a malformed record, on the line where the error is.
    bad("elem.json", "[{\"text\":\"x\"},\n {\"text\":\n tru}]", "elem.json:3: malformed JSON:");
    // A record without the field, or with a non-string one.
    bad("field.json", "[{\"text\":\"x\"},\n {\"text\": 5}]", "field.json:2: no string field 'text'");
}

// ---------------------------------------------------------------------------------------------

TEST(DataSourceCompressed, GzipAndZstdByExtensionAndMagic) {
    const std::string dir = test_dir();
    const std::string jsonl = "{\"text\": \"alpha\"}\n\n{\"text\": \"beta\"}\n";
    const std::string txt = "one\ntwo\n\nthree\n";
    write_file(dir + "/a.jsonl.gz", gzip_bytes(jsonl));
    write_file(dir + "/a.jsonl.zst", zstd_bytes(jsonl));
    write_file(dir + "/a.txt.gz", gzip_bytes(txt));
    write_file(dir + "/a.txt.zstd", zstd_bytes(txt));
    EXPECT_EQ(read_texts(dir + "/a.jsonl.gz"), (Strings{"alpha", "beta"}));
    EXPECT_EQ(read_texts(dir + "/a.jsonl.zst"), (Strings{"alpha", "beta"}));
    EXPECT_EQ(read_texts(dir + "/a.txt.gz", "split=line"), (Strings{"one", "two", "three"}));
    EXPECT_EQ(read_texts(dir + "/a.txt.zstd", "split=block"), (Strings{"one\ntwo", "three"}));
    EXPECT_EQ(read_all(parse_source_spec(dir + "/a.jsonl.gz"))[1].origin, dir + "/a.jsonl.gz:3");
    // Compressed bytes under a plain name are told by their magic.
    write_file(dir + "/m.jsonl", gzip_bytes(jsonl));
    write_file(dir + "/m.txt", zstd_bytes(txt));
    EXPECT_EQ(read_texts(dir + "/m.jsonl"), (Strings{"alpha", "beta"}));
    EXPECT_EQ(read_texts(dir + "/m.txt", "split=line"), (Strings{"one", "two", "three"}));
    // Concatenated gzip members and zstd frames read as one stream.
    write_file(dir + "/cat.txt.gz", gzip_bytes("a\nb\n") + gzip_bytes("c\n"));
    write_file(dir + "/cat.txt.zst", zstd_bytes("a\nb\n") + zstd_bytes("c\n"));
    EXPECT_EQ(read_texts(dir + "/cat.txt.gz", "split=line"), (Strings{"a", "b", "c"}));
    EXPECT_EQ(read_texts(dir + "/cat.txt.zst", "split=line"), (Strings{"a", "b", "c"}));
}

TEST(DataSourceCompressed, LargeCompressedFileCrossesBufferBoundaries) {
    // 3 MB decompressed: several 1 MiB output chunks, lines split across them.
    const std::string dir = test_dir();
    std::string body;
    for (int i = 0; body.size() < (3u << 20); ++i)
        body += fmt::format("{{\"text\": \"record {} {}\"}}\n", i, i * 7);
    write_file(dir + "/big.jsonl.gz", gzip_bytes(body));
    write_file(dir + "/big.jsonl.zst", zstd_bytes(body));
    const auto gz = read_texts(dir + "/big.jsonl.gz");
    const auto zst = read_texts(dir + "/big.jsonl.zst");
    ASSERT_GT(gz.size(), 90000u);
    EXPECT_EQ(gz, zst);
    EXPECT_EQ(gz[12345], "record 12345 86415");
}

TEST(DataSourceCompressed, CorruptDataNamesTheFile) {
    const std::string dir = test_dir();
    std::string text;
    for (int i = 0; i < 2000; ++i) text += fmt::format("line {} of some compressible text\n", i);
    std::string gz = gzip_bytes(text);
    std::string zst = zstd_bytes(text);

    std::string flipped = gz;
    for (size_t i = 20; i < 40; ++i) flipped[i] = static_cast<char>(flipped[i] ^ 0x5a);
    write_file(dir + "/flipped.txt.gz", flipped);
    expect_read_error(dir + "/flipped.txt.gz", "split=line", {dir + "/flipped.txt.gz: corrupt gzip data"});

    write_file(dir + "/cut.txt.gz", gz.substr(0, gz.size() / 2));
    expect_read_error(dir + "/cut.txt.gz", "split=line", {dir + "/cut.txt.gz: truncated gzip data"});

    write_file(dir + "/cut.txt.zst", zst.substr(0, zst.size() / 2));
    expect_read_error(dir + "/cut.txt.zst", "split=line", {dir + "/cut.txt.zst: truncated zstd data"});

    std::string bad_header = zst;
    bad_header[4] = static_cast<char>(0xff);  // frame header descriptor: reserved bit set
    write_file(dir + "/header.txt.zst", bad_header);
    expect_read_error(dir + "/header.txt.zst", "split=line", {dir + "/header.txt.zst: corrupt zstd data"});

    write_file(dir + "/plain.txt.gz", "not compressed\n");
    expect_read_error(dir + "/plain.txt.gz", "", {dir + "/plain.txt.gz: not gzip data"});
    write_file(dir + "/plain.txt.zst", "not compressed\n");
    expect_read_error(dir + "/plain.txt.zst", "", {dir + "/plain.txt.zst: not zstd data"});
}

// ---------------------------------------------------------------------------------------------

TEST(DataSourcePaths, DirectoryIsRecursiveSortedWithoutHiddenFiles) {
    const std::string dir = test_dir();
    for (const char* f : {"/b.txt", "/a.txt", "/sub/c.txt", "/sub/deeper/d.txt", "/.hidden.txt",
                          "/.git/e.txt", "/sub/.f.txt"}) {
        write_file(dir + f, std::string(f) + "\n");
    }
    auto reader = open_source(parse_source_spec(dir));
    EXPECT_EQ(reader->files(),
              (Strings{dir + "/a.txt", dir + "/b.txt", dir + "/sub/c.txt", dir + "/sub/deeper/d.txt"}));
    EXPECT_EQ(read_texts(dir + "/"),
              (Strings{"/a.txt\n", "/b.txt\n", "/sub/c.txt\n", "/sub/deeper/d.txt\n"}));
}

TEST(DataSourcePaths, GlobWithRecursion) {
    const std::string dir = test_dir();
    for (const char* f : {"/z.jsonl", "/x.jsonl", "/s/y.jsonl", "/s/t/w.jsonl", "/s/t/w.txt", "/s/.h/v.jsonl",
                          "/s/.u.jsonl", "/a1.jsonl", "/a2.jsonl", "/ab.jsonl", "/s/t/u/é.jsonl"}) {
        write_file(dir + f, "{\"text\": \"" + std::string(f) + "\"}\n");
    }
    const auto files = [&](const std::string& pattern) {
        return open_source(parse_source_spec(pattern))->files();
    };
    EXPECT_EQ(files(dir + "/**/*.jsonl"),
              (Strings{dir + "/a1.jsonl", dir + "/a2.jsonl", dir + "/ab.jsonl", dir + "/s/t/u/é.jsonl",
                       dir + "/s/t/w.jsonl", dir + "/s/y.jsonl", dir + "/x.jsonl", dir + "/z.jsonl"}));
    EXPECT_EQ(files(dir + "/*.jsonl"), (Strings{dir + "/a1.jsonl", dir + "/a2.jsonl", dir + "/ab.jsonl",
                                                dir + "/x.jsonl", dir + "/z.jsonl"}));
    EXPECT_EQ(files(dir + "/s/**"), (Strings{dir + "/s/t/u/é.jsonl", dir + "/s/t/w.jsonl", dir + "/s/t/w.txt",
                                             dir + "/s/y.jsonl"}));
    EXPECT_EQ(files(dir + "/a?.jsonl"), (Strings{dir + "/a1.jsonl", dir + "/a2.jsonl", dir + "/ab.jsonl"}));
    EXPECT_EQ(files(dir + "/a[0-9].jsonl"), (Strings{dir + "/a1.jsonl", dir + "/a2.jsonl"}));
    EXPECT_EQ(files(dir + "/a[!0-9].jsonl"), (Strings{dir + "/ab.jsonl"}));
    EXPECT_EQ(files(dir + "/**/u/?.jsonl"), (Strings{dir + "/s/t/u/é.jsonl"}));
    EXPECT_EQ(files(dir + "/*/*/w.*"), (Strings{dir + "/s/t/w.jsonl", dir + "/s/t/w.txt"}));
    EXPECT_EQ(files(dir + "/s/.*.jsonl"), (Strings{dir + "/s/.u.jsonl"}));
    // Documents follow the sorted file order.
    EXPECT_EQ(read_texts(dir + "/**/[xz].jsonl"), (Strings{"/x.jsonl", "/z.jsonl"}));
}

TEST(DataSourcePaths, RelativeGlob) {
    const std::string dir = test_dir();
    write_file(dir + "/r/one.txt", "1");
    write_file(dir + "/r/two.txt", "2");
    const fs::path cwd = fs::current_path();
    fs::current_path(dir);
    Strings files;
    try {
        files = open_source(parse_source_spec("r/*.txt"))->files();
    } catch (...) {
        fs::current_path(cwd);
        throw;
    }
    fs::current_path(cwd);
    EXPECT_EQ(files, (Strings{"r/one.txt", "r/two.txt"}));
}

TEST(DataSourcePaths, Errors) {
    const std::string dir = test_dir();
    expect_error([&] { open_source(parse_source_spec(dir + "/missing.txt")); },
                 {dir + "/missing.txt: no such file or directory"});
    expect_error([&] { open_source(parse_source_spec(dir + "/**/*.jsonl")); },
                 {dir + "/**/*.jsonl: no files match"});
    expect_error([&] { open_source(parse_source_spec(dir + "/nodir/*.txt")); }, {"no files match"});
    fs::create_directories(dir + "/empty");
    expect_error([&] { open_source(parse_source_spec(dir + "/empty")); },
                 {dir + "/empty: directory has no files"});
    write_file(dir + "/notes.csv", "a,b\n");
    expect_error([&] { open_source(parse_source_spec(dir + "/notes.csv:name=notes")); },
                 {"notes: cannot tell the format of '" + dir + "/notes.csv'"});
    EXPECT_NO_THROW(open_source(parse_source_spec(dir + "/notes.csv:format=txt")));
    fs::create_symlink(dir + "/gone.txt", dir + "/dangling.txt");
    expect_error([&] { open_source(parse_source_spec(dir + "/dangling.txt")); },
                 {"dangling.txt: no such file"});
    write_file(dir + "/j.jsonl", "{\"text\":\"a\"}\n");
    expect_error([&] { open_source(parse_source_spec(dir + "/j.jsonl:field=a..b")); }, {"bad field 'a..b'"});
    if (geteuid() != 0) {  // root reads anything: the permission case only exists for other users
        write_file(dir + "/locked.txt", "x");
        fs::permissions(dir + "/locked.txt", fs::perms::none);
        expect_error([&] { open_source(parse_source_spec(dir + "/locked.txt")); },
                     {dir + "/locked.txt: cannot read"});
    }
    // A file that disappears between resolution and reading.
    write_file(dir + "/vanish.txt", "x");
    auto reader = open_source(parse_source_spec(dir + "/vanish.txt"));
    fs::remove(dir + "/vanish.txt");
    Document doc;
    expect_error([&] { reader->next(doc); }, {dir + "/vanish.txt: cannot open"});
}

// ---------------------------------------------------------------------------------------------

TEST(DataSourceBadInput, EmptySourceFailsAtTheEnd) {
    const std::string dir = test_dir();
    write_file(dir + "/e/a.txt", "");
    write_file(dir + "/e/b.txt", "\n \n");
    expect_read_error(dir + "/e", "name=empties", {"empties: no documents in 2 files"});
    expect_read_error(dir + "/e/b.txt", "split=line", {dir + "/e/b.txt: no documents in 1 file"});
    write_file(dir + "/blank.jsonl", "\n\n");
    expect_read_error(dir + "/blank.jsonl", "", {"blank.jsonl: no documents"});
    write_file(dir + "/allbad.jsonl", "{\"x\": 1}\nnot json\n");
    expect_read_error(dir + "/allbad.jsonl", "", {"no documents in 1 file (2 records skipped)"},
                      {.utf8 = Utf8Policy::Replace, .skip_bad = true});
    // The error comes once the source is read through, after its documents... of which there are none.
    auto reader = open_source(parse_source_spec(dir + "/e"));
    Document doc;
    EXPECT_THROW(reader->next(doc), Error);
}

TEST(DataSourceBadInput, MalformedJsonl) {
    const std::string dir = test_dir();
    const std::string path = dir + "/a.jsonl";
    write_file(path,
               "{\"text\": \"ok\"}\n{\"text\": \"a\",}\n{\"text\": \"fine\"}\n[1, 2\n{\"text\": \"end\"}\n");
    expect_read_error(path, "", {path + ":2: malformed JSON: column 14: syntax error"});
    auto reader = open_source(parse_source_spec(path), {.utf8 = Utf8Policy::Replace, .skip_bad = true});
    Strings got;
    Document doc;
    while (reader->next(doc)) got.push_back(doc.text);
    EXPECT_EQ(got, (Strings{"ok", "fine", "end"}));
    EXPECT_EQ(reader->skipped(), 2);
}

TEST(DataSourceBadInput, MissingOrNonStringField) {
    const std::string dir = test_dir();
    const std::string path = dir + "/a.jsonl";
    write_file(path,
               "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n{\"text\": 3}\n{\"text\": null}\n{\"text\": [\"a\"]}\n"
               "{\"text\": {\"a\": 1}}\n\"text\"\n{\"text\": \"end\"}\n");
    expect_read_error(path, "", {path + ":2: no string field 'text'"});
    auto reader = open_source(parse_source_spec(path), {.utf8 = Utf8Policy::Replace, .skip_bad = true});
    Strings got;
    Document doc;
    while (reader->next(doc)) got.push_back(doc.text);
    EXPECT_EQ(got, (Strings{"ok", "end"}));
    EXPECT_EQ(reader->skipped(), 6);
    // Each non-string kind fails on its own line.
    for (int line = 3; line <= 7; ++line) {
        std::string body = "{\"text\": \"ok\"}\n";
        std::ifstream in(path);
        std::string l;
        for (int i = 1; std::getline(in, l); ++i) {
            if (i == line) body += l + "\n";
        }
        write_file(dir + "/one.jsonl", body);
        expect_read_error(dir + "/one.jsonl", "", {dir + "/one.jsonl:2: no string field 'text'"});
    }
}

TEST(DataSourceBadInput, InvalidUtf8FailNamesLineAndOffset) {
    const std::string dir = test_dir();
    const ReadOptions strict{.utf8 = Utf8Policy::Fail, .skip_bad = false};
    write_file(dir + "/a.txt", "good line\nbad \xFF here\n");
    expect_read_error(dir + "/a.txt", "split=line", {dir + "/a.txt:2: invalid UTF-8 at byte offset 14"},
                      strict);
    expect_read_error(dir + "/a.txt", "split=block", {dir + "/a.txt:2: invalid UTF-8 at byte offset 14"},
                      strict);
    expect_read_error(dir + "/a.txt", "split=file", {dir + "/a.txt:2: invalid UTF-8 at byte offset 14"},
                      strict);
    write_file(dir + "/b.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"\xC3\x28\"}\n");
    expect_read_error(dir + "/b.jsonl", "", {dir + "/b.jsonl:2: invalid UTF-8 at byte offset 25"}, strict);
    write_file(dir + "/c.json", "[{\"text\": \"ok\"},\n {\"text\":\n  \"\xED\xA0\x80\"}]");
    expect_read_error(dir + "/c.json", "", {dir + "/c.json:3: invalid UTF-8 at byte offset 30"}, strict);
    // Offsets count the decompressed bytes.
    write_file(dir + "/d.txt.gz", gzip_bytes("good line\nbad \xFF here\n"));
    expect_read_error(dir + "/d.txt.gz", "split=line", {dir + "/d.txt.gz:2: invalid UTF-8 at byte offset 14"},
                      strict);
}

TEST(DataSourceBadInput, InvalidUtf8ReplacedByDefault) {
    const std::string dir = test_dir();
    write_file(dir + "/a.txt", "bad \xFF here\n\xF0\x9F\x98 cut\n");
    EXPECT_EQ(read_texts(dir + "/a.txt", "split=line"),
              (Strings{"bad \xEF\xBF\xBD here", "\xEF\xBF\xBD cut"}));
    write_file(dir + "/b.jsonl", "{\"text\": \"x\xC0\xAFy\"}\n");
    EXPECT_EQ(read_texts(dir + "/b.jsonl"), (Strings{"x\xEF\xBF\xBD\xEF\xBF\xBDy"}));
}

// ---------------------------------------------------------------------------------------------

TEST(DataSourceUtf8, MaximalSubpartsAsPython) {
    // Expected values from Python 3.11: bytes.decode("utf-8", "replace").encode("utf-8").
    const std::string R = "\xEF\xBF\xBD";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"plain ascii", "plain ascii"},
        {"a\x80\x62", "a" + R + "b"},         // \x62 is b
        {"\xC0\xAF", R + R},                  // overlong lead C0: each byte alone
        {"\xE0\x80\x80", R + R + R},          // E0 needs A0..BF next
        {"\xE0\xA0", R},                      // truncated 3-byte: one replacement
        {"\xED\xA0\x80", R + R + R},          // surrogate D800
        {"\xF0\x9F\x98", R},                  // truncated 4-byte
        {"\xF0\x9F\x98\x41", R + "A"},        // \x41 is A
        {"\xF4\x90\x80\x80", R + R + R + R},  // above U+10FFFF
        {"\xF5", R},
        {"\xE2\x82\xAC", "\xE2\x82\xAC"},          // U+20AC
        {"\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80"},  // U+1F600
        {"\xC2", R},
        {"\xE1\x80\xC0", R + R},
        {"\xEF\xBF\xBD\xFF", R + R},
        {"\xF1\x80\x80\xE1\x80\xC2\x41", R + R + R + "A"},
    };
    for (const auto& [in, want] : cases) {
        std::string s = in;
        utf8::replace_invalid(s);
        EXPECT_EQ(s, want) << "input bytes: " << testing::PrintToString(in);
        EXPECT_EQ(utf8::first_invalid(in) == std::string::npos, in == want);
    }
    EXPECT_EQ(utf8::first_invalid("ok \xE2\x82\xAC then \xFF"), 12u);
}

TEST(DataSourceUtf8, RandomBytesMatchPython) {
    if (std::system("python3 -c pass >/dev/null 2>&1") != 0) GTEST_SKIP() << "python3 not available";
    const std::string dir = test_dir();
    // Bytes at every boundary of the well-formed ranges, in random strings of 0..12 bytes.
    const unsigned char alphabet[] = {0x41, 0x0A, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF,
                                      0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE,
                                      0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF8, 0xFE, 0xFF};
    Rng rng(7);
    std::vector<std::string> inputs;
    std::string hex;
    for (int i = 0; i < 5000; ++i) {
        std::string s;
        const auto len = rng.below(13);
        for (uint64_t k = 0; k < len; ++k) s += static_cast<char>(alphabet[rng.below(sizeof(alphabet))]);
        inputs.push_back(s);
        for (unsigned char c : s) hex += fmt::format("{:02x}", c);
        hex += '\n';
    }
    write_file(dir + "/in.hex", hex);
    const std::string cmd = fmt::format(
        "python3 -c \"import sys\n"
        "for l in open(sys.argv[1]): print(bytes.fromhex(l.strip()).decode('utf-8', "
        "'replace').encode().hex())\" "
        "{0}/in.hex > {0}/out.hex",
        dir);
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    std::ifstream out(dir + "/out.hex");
    std::string line;
    size_t i = 0;
    for (; std::getline(out, line); ++i) {
        ASSERT_LT(i, inputs.size());
        std::string mine = inputs[i];
        utf8::replace_invalid(mine);
        std::string mine_hex;
        for (unsigned char c : mine) mine_hex += fmt::format("{:02x}", c);
        ASSERT_EQ(mine_hex, line) << "input " << i << ": " << testing::PrintToString(inputs[i]);
    }
    EXPECT_EQ(i, inputs.size());
}

// ---------------------------------------------------------------------------------------------

// Streams a 50 MB line file and checks the peak resident set grows by under 30 MB. The reader
// holds two 1 MiB buffers and one line, so the expected growth is a few MB; reading the file
// whole would need 50 MB or more, so the bound separates the two with room for allocator slack.
// The reading runs in a forked child: ru_maxrss is a process's lifetime peak, and a child starts
// from its own resident set, not from whatever peak earlier tests left in this process.
TEST(DataSourceStreaming, LargeFileInBoundedMemory) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "ASan's quarantine keeps freed memory resident; the bound does not apply";
#endif
    const std::string dir = test_dir();
    const std::string path = dir + "/big.txt";
    constexpr int64_t kTarget = 50ll << 20;
    int64_t lines = 0, bytes = 0;
    {
        std::ofstream out(path, std::ios::binary);
        std::string chunk;
        while (bytes < kTarget) {
            chunk.clear();
            for (int i = 0; i < 10000; ++i, ++lines) {
                fmt::format_to(std::back_inserter(chunk),
                               "document {:08d}: the quick brown fox jumps over it\n", lines);
            }
            out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
            bytes += static_cast<int64_t>(chunk.size());
        }
        ASSERT_TRUE(out.good());
    }
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        struct rusage before {
        }, after{};
        getrusage(RUSAGE_SELF, &before);
        int64_t docs = 0, text_bytes = 0;
        try {
            auto reader = open_source(parse_source_spec(path + ":split=line"));
            Document doc;
            while (reader->next(doc)) {
                ++docs;
                text_bytes += static_cast<int64_t>(doc.text.size()) + 1;
            }
        } catch (...) {
            docs = -1;
        }
        getrusage(RUSAGE_SELF, &after);
        const int64_t result[3] = {docs, text_bytes, after.ru_maxrss - before.ru_maxrss};  // ru_maxrss: KiB
        const ssize_t w = write(fds[1], result, sizeof(result));
        _exit(w == static_cast<ssize_t>(sizeof(result)) ? 0 : 1);
    }
    close(fds[1]);
    int64_t result[3] = {0, 0, 0};
    const ssize_t r = read(fds[0], result, sizeof(result));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_EQ(r, static_cast<ssize_t>(sizeof(result)));
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT_EQ(result[0], lines);
    EXPECT_EQ(result[1], bytes);
    EXPECT_LT(result[2], 30 * 1024) << "peak RSS grew by " << result[2] / 1024 << " MiB";
    fs::remove(path);
}
