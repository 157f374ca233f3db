/* kumoctl: the sysadmin's command-line client of kumod's control socket.
 * Entry point: main.  Exit status 0 on success, 1 when kumod answered with
 * an error, 2 for usage errors, 3 when kumod is not running (no socket or
 * nobody answering). */
#include "lib/frame.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define KUMOCTL_DEFAULT_SOCKET "/var/spool/kumomta/kumod.sock"
#define KUMOCTL_VERSION "0.1.0"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kumoctl [--socket PATH] COMMAND\n"
		"commands:\n"
		"  status    print kumod's state as JSON (version, uptime, pids, listeners,\n"
		"            sessions, queue counts)\n"
		"  reload    load the policy file again (the old one keeps serving if it fails)\n"
		"  stop      stop kumod gracefully (as SIGTERM does)\n"
		"  version   print kumod's version\n"
		"  queue-summary  messages per scheduled queue and per destination site\n"
		"  flush     retry every waiting message now\n"
		"The socket defaults to %s (kumod puts it beside the meta spool).\n",
		KUMOCTL_DEFAULT_SOCKET);
}

static double num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : "";
}

/* Two tables, as KumoMTA's kcli queue-summary: destination sites (ready
 * queues), then scheduled queues. */
static void print_summary(const cJSON *s)
{
	const cJSON *e;
	printf("%-50s %8s %9s %5s\n", "SITE", "READY", "IN_FLIGHT", "CONNS");
	cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(s, "sites"))
		printf("%-50s %8.0f %9.0f %5.0f\n", str(e, "name"), num(e, "ready"), num(e, "in_flight"),
		       num(e, "connections"));
	printf("\n%-50s %8s %9s\n", "SCHEDULED QUEUE", "COUNT", "DUE");
	cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(s, "queues"))
		printf("%-50s %8.0f %9.0f\n", str(e, "name"), num(e, "count"), num(e, "due"));
	printf("\n%.0f message(s): %.0f waiting for a retry, %.0f due, %.0f ready, %.0f in flight\n",
	       num(s, "messages"), num(s, "waiting"), num(s, "due"), num(s, "ready"), num(s, "in_flight"));
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'v' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = getenv("KUMOCTL_SOCKET") ? getenv("KUMOCTL_SOCKET") : KUMOCTL_DEFAULT_SOCKET;
	int o;
	while ((o = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		switch (o) {
		case 's': path = optarg; break;
		case 'h': usage(stdout); return 0;
		case 'v': printf("kumoctl %s\n", KUMOCTL_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind];
	if (strcmp(cmd, "status") != 0 && strcmp(cmd, "stop") != 0 && strcmp(cmd, "version") != 0 &&
	    strcmp(cmd, "reload") != 0 && strcmp(cmd, "queue-summary") != 0 && strcmp(cmd, "flush") != 0) {
		fprintf(stderr, "kumoctl: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}
	struct sockaddr_un sun;
	if (netaddr_unix(path, &sun) == 0) {
		fprintf(stderr, "kumoctl: socket path too long: %s\n", path);
		return 2;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
		fprintf(stderr, "kumoctl: kumod is not running (cannot connect to %s: %s)\n", path, strerror(errno));
		return 3;
	}
	cJSON *req = cJSON_CreateObject();
	cJSON_AddNumberToObject(req, "id", 1);
	cJSON_AddStringToObject(req, "op", cmd);
	char err[256];
	cJSON *reply = NULL;
	if (frame_send_fd(fd, req, err, sizeof err) != 0 || frame_recv_fd(fd, &reply, 150000, err, sizeof err) != 0) {
		fprintf(stderr, "kumoctl: no answer from kumod on %s: %s\n", path, err);
		return 3;
	}
	cJSON_Delete(req);
	close(fd);
	const cJSON *ok = cJSON_GetObjectItemCaseSensitive(reply, "ok");
	if (!cJSON_IsTrue(ok)) {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(reply, "error");
		fprintf(stderr, "kumoctl: %s\n", cJSON_IsString(e) ? e->valuestring : "kumod refused the command");
		cJSON_Delete(reply);
		return 1;
	}
	if (strcmp(cmd, "status") == 0) {
		cJSON_DeleteItemFromObjectCaseSensitive(reply, "ok");
		char *text = cJSON_Print(reply);
		printf("%s\n", text);
		free(text);
	} else if (strcmp(cmd, "version") == 0) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(reply, "version");
		printf("kumod %s\n", cJSON_IsString(v) ? v->valuestring : "?");
	} else if (strcmp(cmd, "reload") == 0) {
		printf("policy reloaded\n");
	} else if (strcmp(cmd, "flush") == 0) {
		const cJSON *n = cJSON_GetObjectItemCaseSensitive(reply, "flushed");
		printf("%d waiting message(s) scheduled for delivery now\n", cJSON_IsNumber(n) ? (int)n->valuedouble : 0);
	} else if (strcmp(cmd, "queue-summary") == 0) {
		print_summary(cJSON_GetObjectItemCaseSensitive(reply, "summary"));
	} else {
		printf("kumod is stopping\n");
	}
	cJSON_Delete(reply);
	return 0;
}
