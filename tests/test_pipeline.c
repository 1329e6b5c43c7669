// tests/test_pipeline.c: answer extraction, trigger detection, CSV reading.
#include "test.h"

#include <stdlib.h>

static void check_extract(const char *text, int thinking_open, const char *want) {
    char got[256];
    answer_extract(text, strlen(text), thinking_open, got, sizeof got);
    CHECKF(strcmp(got, want) == 0, "answer of '%s': got '%s', want '%s'", text, got, want);
}

static void t_answer_extraction(void) {
    check_extract("so the total is \\boxed{1,234}.", 1, "1234");
    check_extract("first \\boxed{3} then \\boxed{ 42 }", 1, "42");
    check_extract("it costs \\boxed{\\$12.50}", 1, "12.5"); // LaTeX \$ is a dollar too
    check_extract("The answer: \\boxed{\\frac{1}{2}}", 1, "\\frac{1}{2}");
    check_extract("Natalia sold 48/2 = 24 clips.\n#### 72", 0, "72");
    check_extract("#### $1,000.00\n", 0, "1000");
    check_extract("#### -7 apples", 0, "-7");
    check_extract("thinking about 5 and 6</think> so she pays $12.50.", 1, "12.5");
    check_extract("I think it is 40 or 41", 1, "");      // still thinking: no answer
    check_extract("It is 40, no, 41.", 0, "41");          // no <think> opened: last number
    check_extract("", 0, "");
    check_extract("no numbers at all", 0, "");
    check_extract("\\boxed{12", 0, "12");                // unclosed box: fall back to the last number
    CHECK(answer_correct("18", "18"));
    char p[64];
    answer_normalize("$1,234.0", 8, p, sizeof p);
    CHECK(strcmp(p, "1234") == 0 && answer_correct(p, "1234"));
    CHECK(!answer_correct("", "0"));
    CHECK(!answer_correct("17", "18"));
}

static void t_prompt_thinking_open(void) {
    CHECK(prompt_thinking_open("<|user|>\nq\n<|assistant|>\n<think>\n"));
    CHECK(!prompt_thinking_open("<|assistant|>\n<think>\n\n</think>\n\n"));
    CHECK(!prompt_thinking_open("Question: q\nAnswer:"));
}

static void t_triggers_whole_words_case_sensitive(void) {
    char *triggers[] = {"Wait", "But wait", "Hold on", "Hmm"};
    const char *text = "Ok. Wait, 3+4=7. Waiting is fine. wait no. But wait... Hold on.Hmm\nAwait x Hmm";
    TriggerHit hits[16];
    int n = find_triggers(text, strlen(text), triggers, 4, hits, 16);
    CHECK(n == 5);
    int want_start[] = {4, 43, 55, 63, 75}, want_trigger[] = {0, 1, 2, 3, 3};
    for (int i = 0; i < n && i < 5; i++) {
        CHECKF(hits[i].start == want_start[i] && hits[i].trigger == want_trigger[i], "hit %d: start %d trigger %d", i,
               hits[i].start, hits[i].trigger);
        CHECK(hits[i].end == hits[i].start + (int)strlen(triggers[hits[i].trigger]));
    }
    CHECK(find_triggers("", 0, triggers, 4, hits, 16) == 0);
    CHECK(find_triggers("Wait", 4, triggers, 4, hits, 16) == 1 && hits[0].start == 0);
}

static void t_csv_read_quoted(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/t.csv", test_tmpdir());
    const char *text = "a,b,c\n1,\"x, y\",\"say \"\"hi\"\"\nthere\"\n2,,z\r\n";
    Err err = {0};
    CHECK(write_file_atomic(path, text, strlen(text), &err) == 0);
    Csv t;
    CHECK(csv_read(path, &t, &err) == 0);
    CHECK(t.n_rows == 2 && t.n_cols == 3 && csv_col(&t, "c") == 2 && csv_col(&t, "d") == -1);
    CHECK(strcmp(csv_cell(&t, 0, 1), "x, y") == 0 && strcmp(csv_cell(&t, 0, 2), "say \"hi\"\nthere") == 0);
    CHECK(strcmp(csv_cell(&t, 1, 1), "") == 0 && strcmp(csv_cell(&t, 1, 2), "z") == 0);
    csv_free(&t);
    const char *bad = "a,b\n1,2\n3\n";
    CHECK(write_file_atomic(path, bad, strlen(bad), &err) == 0);
    CHECK(csv_read(path, &t, &err) == -1 && strstr(err.msg, "t.csv:3: 1 fields, the header has 2"));
}

// Opportunities to backtrack: sentence boundaries with text after them.
static void t_sentence_ends(void) {
    const char *organism =
        "We start with nine. Now nine plus two is eleven. Wait, let me check that. So the total is eleven.\n";
    CHECK(count_sentence_ends(organism, strlen(organism)) == 3); // the last "." is followed by nothing but a newline
    const char *r1 = "Step 1: 3 + 4 = 7\n\nWait, 3.5 is not 3! Let me redo it? Yes.";
    CHECK(count_sentence_ends(r1, strlen(r1)) == 3); // "\n\n" is one boundary; "3.5" is none
    const char *answer = " \\boxed{3}.";
    CHECK(count_sentence_ends(answer, strlen(answer)) == 0);
    CHECK(count_sentence_ends("", 0) == 0 && count_sentence_ends("a.b. c", 6) == 1);
}

const TestCase tests_pipeline[] = {
    {"pipeline: answer extraction and comparison", t_answer_extraction},
    {"pipeline: prompts that leave <think> open", t_prompt_thinking_open},
    {"pipeline: triggers are case-sensitive whole words", t_triggers_whole_words_case_sensitive},
    {"pipeline: csv reading with quotes", t_csv_read_quoted},
    {"pipeline: opportunities to backtrack are sentence ends with text after them", t_sentence_ends},
    {0, 0},
};
