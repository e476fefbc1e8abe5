/* The kvtc subcommands. Each takes the arguments after "kvtc" (argv[0] is the
 * subcommand's name) and returns the exit status: 0 success, 1 failure, 2
 * usage error. Every one accepts --help. */
#ifndef KVTC_COMMANDS_H
#define KVTC_COMMANDS_H

int cmd_calibrate(int argc, char **argv);  /* caches -> .kvtcal */
int cmd_compress(int argc, char **argv);   /* cache -> .kvtc */
int cmd_decompress(int argc, char **argv); /* .kvtc -> cache */
int cmd_info(int argc, char **argv);       /* describe any kvtc file */
int cmd_stats(int argc, char **argv);      /* ratio and error of a round trip */
int cmd_capture(int argc, char **argv);    /* run a model, save its cache (tools/cmd_capture.c) */
int cmd_generate(int argc, char **argv);   /* generate text, optionally from a cache */
int cmd_demo(int argc, char **argv);       /* the main demo (make demo) */
int cmd_eval(int argc, char **argv);       /* the accuracy harness (tools/cmd_eval.c) */
int cmd_fetch(int argc, char **argv);      /* a known model into the cache folder */
int cmd_serve(int argc, char **argv);      /* the chat server (server/) */

#endif /* KVTC_COMMANDS_H */
