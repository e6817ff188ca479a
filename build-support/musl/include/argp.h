/* Declarations only, for building vendored elfutils (libelf) against musl.
 * musl has no argp; elfutils' lib/color.c still compiles against it even
 * though libbpf never links the code that uses it. Nothing here is defined,
 * so a real use would fail at link time rather than misbehave. */
#ifndef KDIAG_MUSL_ARGP_H
#define KDIAG_MUSL_ARGP_H
#include <stdio.h>
#include <errno.h>

typedef int error_t;

#define OPTION_ARG_OPTIONAL 0x1
#define OPTION_HIDDEN 0x2
#define ARGP_ERR_UNKNOWN E2BIG
#define ARGP_KEY_ARG 0
#define ARGP_KEY_END 0x1000001
#define ARGP_KEY_NO_ARGS 0x1000002
#define ARGP_KEY_INIT 0x1000003
#define ARGP_KEY_SUCCESS 0x1000004
#define ARGP_KEY_ERROR 0x1000005
#define ARGP_HELP_SEE 0x04

struct argp_state;
struct argp_option {
	const char *name;
	int key;
	const char *arg;
	int flags;
	const char *doc;
	int group;
};
typedef error_t (*argp_parser_t)(int key, char *arg, struct argp_state *state);
struct argp_child;
struct argp {
	const struct argp_option *options;
	argp_parser_t parser;
	const char *args_doc;
	const char *doc;
	const struct argp_child *children;
	char *(*help_filter)(int key, const char *text, void *input);
	const char *argp_domain;
};
struct argp_child {
	const struct argp *argp;
	int flags;
	const char *header;
	int group;
};
struct argp_state {
	const struct argp *root_argp;
	int argc;
	char **argv;
	int next;
	unsigned flags;
	unsigned arg_num;
	int quoted;
	void *input;
	void **child_inputs;
	void *hook;
	char *name;
	FILE *err_stream;
	FILE *out_stream;
	void *pstate;
};

void argp_error(const struct argp_state *state, const char *fmt, ...);
void argp_help(const struct argp *argp, FILE *stream, unsigned flags, char *name);
#endif
