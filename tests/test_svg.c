// tests/test_svg.c
#include "test.h"
const TestCase tests_svg[] = {
    {0, 0},
};
