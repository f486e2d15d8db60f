/*
 * driver.c - the benchmark's syscall driver: one file-system operation in a tight loop.
 *
 *     driver OP BUDGET_MS PATH [ARG]
 *
 * Runs OP a few times untimed (WARMUP_OPS, to fill the kernel's caches), then times each
 * op with CLOCK_MONOTONIC until BUDGET_MS milliseconds have passed and at least MIN_OPS ops
 * were timed, and prints one line on stdout:
 *
 *     op=OP n=N ops_s=R mean_us=M p50_us=P p99_us=Q extra=X
 *
 * n is the ops timed, ops_s the ops per second over the timed loop, mean/p50/p99 the
 * latency of one op in microseconds (p50 is the median, p99 the nearest rank), extra an
 * integer that depends on OP: the entries of the last listing for readdir, the bytes of
 * the last read for read, 0 otherwise.
 *
 * OP is one of (PATH relative to the working directory, or absolute):
 *
 *   read        open(PATH, O_RDONLY) + read(4096) + close
 *   write       open(PATH, O_WRONLY) + write(ARG) + close; the write must succeed
 *   writebad    the same, but the write must fail with EINVAL
 *   writetrunc  open(PATH, O_WRONLY | O_TRUNC) + write(ARG) + close (what a shell's > does)
 *   stat        stat(PATH); must succeed
 *   statmiss    stat(PATH); must fail with ENOENT
 *   statn       stat(PATH/eNNNNN), NNNNN cycling over 0 .. ARG-1 (e00000, e00001, ...)
 *   readdir     opendir(PATH) + readdir to the end + closedir; every entry counts,
 *               "." and ".." too when the file system lists them
 *   create      open(PATH, O_WRONLY) + write(a fresh UUID) + close, PATH being an mdev
 *               `create` file; ARG is 8 hex digits, the first group of every UUID
 *   createstat  create, then stat(DIR/devices/UUID), DIR being the directory that holds
 *               PATH (where the new device appears), in the same timed op
 *
 * Only plain libc calls, so the client side costs little and any mount (FUSE, tmpfs,
 * sysfs) is measured the same way. An op with an unexpected result ends the run: a
 * message on stderr and exit status 1 (2 for a bad command line).
 *
 * Build: gcc -O2 -Wall -Wextra driver.c -o driver
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { WARMUP_OPS = 3, MIN_OPS = 5, UUID_LEN = 36 };

/* What every op needs; set once from the command line. */
static const char *op_name, *path, *arg;
static size_t arg_len;
static long statn_entries;          /* statn: how many eNNNNN entries to cycle over */
static char stat_dir[4096];         /* createstat: the directory that holds `create` */
static uint64_t ops_done;           /* every op so far, warm-up included (fresh names) */
static long long extra;             /* the op's extra figure (see the header) */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "driver: %s %s: ", op_name, path);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* --- the ops ------------------------------------------------------------------------ */

static void op_read(void)
{
	char buf[4096];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		die("open: %s", strerror(errno));
	n = read(fd, buf, sizeof buf);
	if (n < 0)
		die("read: %s", strerror(errno));
	if (close(fd) != 0)
		die("close: %s", strerror(errno));
	extra = n;
}

/* open(file, flags) + write(data) + close; want_errno 0: the write must succeed. */
static void write_file(const char *file, int flags, const char *data, size_t len,
		       int want_errno)
{
	int fd = open(file, flags);
	ssize_t n;

	if (fd < 0)
		die("open %s: %s", file, strerror(errno));
	n = write(fd, data, len);
	if (want_errno == 0 && n != (ssize_t)len)
		die("write %s: %s", file, n < 0 ? strerror(errno) : "short write");
	if (want_errno != 0 && (n >= 0 || errno != want_errno))
		die("write %s: wanted %s, got %s", file, strerror(want_errno),
		    n >= 0 ? "success" : strerror(errno));
	if (close(fd) != 0)
		die("close %s: %s", file, strerror(errno));
}

static void op_write(void)
{
	write_file(path, O_WRONLY, arg, arg_len, 0);
}

static void op_writebad(void)
{
	write_file(path, O_WRONLY, arg, arg_len, EINVAL);
}

static void op_writetrunc(void)
{
	write_file(path, O_WRONLY | O_TRUNC, arg, arg_len, 0);
}

static void op_stat(void)
{
	struct stat st;

	if (stat(path, &st) != 0)
		die("stat: %s", strerror(errno));
}

static void op_statmiss(void)
{
	struct stat st;

	if (stat(path, &st) == 0)
		die("stat: wanted ENOENT, the name exists");
	if (errno != ENOENT)
		die("stat: wanted ENOENT, got %s", strerror(errno));
}

static void op_statn(void)
{
	char name[4200];
	struct stat st;

	snprintf(name, sizeof name, "%s/e%05ld", path, (long)(ops_done % statn_entries));
	if (stat(name, &st) != 0)
		die("stat %s: %s", name, strerror(errno));
}

static void op_readdir(void)
{
	DIR *dir = opendir(path);
	long long entries = 0;

	if (dir == NULL)
		die("opendir: %s", strerror(errno));
	errno = 0;
	while (readdir(dir) != NULL)
		entries++;
	if (errno != 0)
		die("readdir: %s", strerror(errno));
	if (closedir(dir) != 0)
		die("closedir: %s", strerror(errno));
	extra = entries;
}

/* A UUID no earlier op wrote: ARG, then this process's id and the op's number. */
static void fresh_uuid(char out[UUID_LEN + 1])
{
	snprintf(out, UUID_LEN + 1, "%.8s-%04x-4000-8000-%012llx", arg,
		 (unsigned)getpid() & 0xffff, (unsigned long long)ops_done & 0xffffffffffffULL);
}

static void op_create(void)
{
	char uuid[UUID_LEN + 1];

	fresh_uuid(uuid);
	write_file(path, O_WRONLY, uuid, UUID_LEN, 0);
}

static void op_createstat(void)
{
	char uuid[UUID_LEN + 1], dev[4200];
	struct stat st;

	fresh_uuid(uuid);
	write_file(path, O_WRONLY, uuid, UUID_LEN, 0);
	snprintf(dev, sizeof dev, "%s/devices/%s", stat_dir, uuid);
	if (stat(dev, &st) != 0)
		die("stat %s: %s", dev, strerror(errno));
}

static const struct {
	const char *name;
	void (*run)(void);
	int needs_arg;
} OPS[] = {
	{"read", op_read, 0},         {"write", op_write, 1},
	{"writebad", op_writebad, 1}, {"writetrunc", op_writetrunc, 1},
	{"stat", op_stat, 0},         {"statmiss", op_statmiss, 0},
	{"statn", op_statn, 1},       {"readdir", op_readdir, 0},
	{"create", op_create, 1},     {"createstat", op_createstat, 1},
};

/* --- the loop and the figures ---------------------------------------------------------- */

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void usage(void)
{
	fprintf(stderr, "usage: driver OP BUDGET_MS PATH [ARG]\nOP: ");
	for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++)
		fprintf(stderr, "%s%s", i ? " " : "", OPS[i].name);
	fputc('\n', stderr);
	exit(2);
}

/* Check ARG where an op gives it a meaning; set what the op needs from it. */
static void prepare(void)
{
	char *end;

	arg_len = arg ? strlen(arg) : 0;
	if (strcmp(op_name, "statn") == 0) {
		statn_entries = strtol(arg, &end, 10);
		if (*end != '\0' || statn_entries <= 0 || statn_entries > 100000) {
			fprintf(stderr, "driver: statn wants 1 to 100000 entries, not %s\n", arg);
			exit(2);
		}
	}
	if (strncmp(op_name, "create", 6) == 0) {
		static char prefix[9];
		const char *slash = strrchr(path, '/');

		for (size_t i = 0; i < 8 && i < arg_len; i++)
			prefix[i] = (char)tolower((unsigned char)arg[i]);
		if (arg_len != 8 || strspn(prefix, "0123456789abcdef") != 8) {
			fprintf(stderr, "driver: %s wants 8 hex digits, not %s\n", op_name, arg);
			exit(2);
		}
		arg = prefix; /* sysfs names a device in lower case */
		if (slash == NULL)
			snprintf(stat_dir, sizeof stat_dir, ".");
		else if (slash == path)
			snprintf(stat_dir, sizeof stat_dir, "/");
		else
			snprintf(stat_dir, sizeof stat_dir, "%.*s", (int)(slash - path), path);
	}
}

int main(int argc, char *argv[])
{
	void (*run)(void) = NULL;
	double budget_ms, start, end, t, sum = 0;
	double *lat = NULL;
	size_t n = 0, cap = 0;
	char *rest;

	if (argc < 4 || argc > 5)
		usage();
	op_name = argv[1];
	path = argv[3];
	arg = argc == 5 ? argv[4] : NULL;
	for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++) {
		if (strcmp(op_name, OPS[i].name) == 0) {
			run = OPS[i].run;
			if (OPS[i].needs_arg && arg == NULL)
				usage();
		}
	}
	budget_ms = strtod(argv[2], &rest);
	if (run == NULL || *rest != '\0' || !(budget_ms >= 0))
		usage();
	prepare();

	for (int i = 0; i < WARMUP_OPS; i++, ops_done++)
		run();

	start = now_us();
	end = start + budget_ms * 1e3;
	for (t = start; t < end || n < MIN_OPS; ops_done++) {
		double before = t;

		run();
		t = now_us();
		if (n == cap) {
			cap = cap ? 2 * cap : 4096;
			lat = realloc(lat, cap * sizeof *lat);
			if (lat == NULL)
				die("out of memory");
		}
		lat[n++] = t - before;
		sum += t - before;
	}

	qsort(lat, n, sizeof *lat, by_value);
	printf("op=%s n=%zu ops_s=%.1f mean_us=%.3f p50_us=%.3f p99_us=%.3f extra=%lld\n",
	       op_name, n, n / ((t - start) / 1e6), sum / n,
	       n % 2 ? lat[n / 2] : (lat[n / 2 - 1] + lat[n / 2]) / 2,
	       lat[(99 * n + 99) / 100 - 1], extra); /* rank ceil(0.99 n), from 1 */
	free(lat);
	return 0;
}
