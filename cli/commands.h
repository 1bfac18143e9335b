/* The eellm subcommands. Each returns the process exit status:
 * 0 success, 1 runtime failure, 2 bad usage or bad input. */
#ifndef EELLM_CLI_COMMANDS_H
#define EELLM_CLI_COMMANDS_H

int cmd_model(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_trace(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_info(int argc, char **argv);

#endif
