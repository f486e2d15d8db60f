/* mdevop: the primitive operations of the mdev differential oracle.
 *
 * Every path argument is relative to the sysfs root named by $SYSROOT (default "/sys"),
 * so that the same command line prints the same line against a real /sys and an mdevfs mount.
 * Every result is one line: "OK ..." or "!ERRNO@step" (errno names from strerrorname_np).
 * Built static (gcc -static) so that one binary runs in the VM's busybox initramfs and on the host.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static const char *root = "/sys";
static char rootreal[PATH_MAX];

static const char *en(int e)
{
	const char *n = strerrorname_np(e);
	static char buf[32];
	if (n)
		return n;
	snprintf(buf, sizeof buf, "E%d", e);
	return buf;
}

static char *full(const char *rel)
{
	static char bufs[4][PATH_MAX];
	static int i;
	char *b = bufs[i++ & 3];
	if (rel[0] == '/')
		rel++;
	if (rel[0])
		snprintf(b, PATH_MAX, "%s/%s", root, rel);
	else
		snprintf(b, PATH_MAX, "%s", root);
	return b;
}

/* Decode C-like escapes: \n \t \\ \xHH, and "@rep:N:C" = N copies of char C. */
static size_t decode(const char *s, char *out, size_t cap)
{
	size_t n = 0;
	if (strncmp(s, "@rep:", 5) == 0) {
		long cnt = strtol(s + 5, NULL, 10);
		const char *c = strchr(s + 5, ':');
		char ch = c ? c[1] : 'x';
		for (long k = 0; k < cnt && n < cap; k++)
			out[n++] = ch;
		return n;
	}
	if (strcmp(s, "@empty") == 0)
		return 0;
	for (; *s && n < cap; s++) {
		if (*s == '\\' && s[1]) {
			s++;
			if (*s == 'n')
				out[n++] = '\n';
			else if (*s == 't')
				out[n++] = '\t';
			else if (*s == '0')
				out[n++] = '\0';
			else if (*s == 'x' && s[1] && s[2]) {
				char h[3] = { s[1], s[2], 0 };
				out[n++] = (char)strtol(h, NULL, 16);
				s += 2;
			} else
				out[n++] = *s;
		} else
			out[n++] = *s;
	}
	return n;
}

static uint64_t fnv(const unsigned char *p, size_t n)
{
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

/* Print content escaped; long or binary content as a hash. */
static void pcontent(const char *b, size_t n)
{
	int bin = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = b[i];
		if (c < 0x20 && c != '\n' && c != '\t')
			bin = 1;
		if (c >= 0x7f)
			bin = 1;
	}
	if (bin || n > 1024) {
		printf("#len=%zu,fnv=%016llx", n, (unsigned long long)fnv((const unsigned char *)b, n));
		return;
	}
	for (size_t i = 0; i < n; i++) {
		char c = b[i];
		if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\t')
			fputs("\\t", stdout);
		else if (c == '\\')
			fputs("\\\\", stdout);
		else if (c == '|')
			fputs("\\x7c", stdout);
		else
			putchar(c);
	}
}

/* Read whole file: returns 0 and fills buf/len, or -errno with *step set. */
static int readall(const char *path, char *buf, size_t cap, size_t *len, const char **step, size_t chunk)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		*step = "open";
		return -errno;
	}
	size_t n = 0;
	for (;;) {
		size_t want = chunk ? chunk : cap - n;
		if (want > cap - n)
			want = cap - n;
		if (want == 0)
			break;
		ssize_t r = read(fd, buf + n, want);
		if (r < 0) {
			int e = errno;
			close(fd);
			*step = "read";
			return -e;
		}
		if (r == 0)
			break;
		n += r;
	}
	*len = n;
	if (close(fd) < 0) {
		*step = "close";
		return -errno;
	}
	return 0;
}

static const char *ftype(mode_t m)
{
	if (S_ISDIR(m))
		return "dir";
	if (S_ISREG(m))
		return "file";
	if (S_ISLNK(m))
		return "link";
	return "other";
}

static int cmpstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **listdir(const char *path, int *count, int *err)
{
	DIR *d = opendir(path);
	*count = 0;
	*err = 0;
	if (!d) {
		*err = errno;
		return NULL;
	}
	int cap = 64;
	char **v = malloc(cap * sizeof *v);
	struct dirent *e;
	errno = 0;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (*count == cap)
			v = realloc(v, (cap *= 2) * sizeof *v);
		v[(*count)++] = strdup(e->d_name);
	}
	if (errno)
		*err = errno;
	closedir(d);
	qsort(v, *count, sizeof *v, cmpstr);
	return v;
}

/* T|state|path|type|mode|size|nlink|uid:gid|target|content */
static void walk(const char *state, const char *rel)
{
	const char *p = full(rel);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s", p);
	struct stat st;
	printf("T|%s|%s|", state, rel);
	if (lstat(path, &st) < 0) {
		printf("!%s@lstat|||||\n", en(errno));
		return;
	}
	printf("%s|%04o|%lld|%lu|%u:%u|", ftype(st.st_mode), (unsigned)(st.st_mode & 07777),
	       (long long)st.st_size, (unsigned long)st.st_nlink, st.st_uid, st.st_gid);
	if (S_ISLNK(st.st_mode)) {
		char t[PATH_MAX];
		ssize_t n = readlink(path, t, sizeof t - 1);
		if (n < 0)
			printf("!%s@readlink|\n", en(errno));
		else {
			t[n] = 0;
			printf("%s|\n", t);
		}
		return;
	}
	printf("|");
	if (S_ISREG(st.st_mode)) {
		static char buf[1 << 20];
		size_t n;
		const char *step;
		int r = readall(path, buf, sizeof buf, &n, &step, 0);
		if (r < 0)
			printf("!%s@%s", en(-r), step);
		else {
			printf("=");
			pcontent(buf, n);
		}
		printf("\n");
		return;
	}
	printf("\n");
	if (S_ISDIR(st.st_mode)) {
		int cnt, err;
		char **v = listdir(path, &cnt, &err);
		if (err)
			printf("T|%s|%s/|!%s@readdir|||||\n", state, rel, en(err));
		for (int i = 0; i < cnt; i++) {
			char sub[PATH_MAX];
			snprintf(sub, sizeof sub, "%s/%s", rel, v[i]);
			walk(state, sub);
			free(v[i]);
		}
		free(v);
	}
}

static void result_write(int fd, const char *data, off_t off, int use_off)
{
	static char buf[65536];
	size_t n = decode(data, buf, sizeof buf);
	ssize_t r = use_off ? pwrite(fd, buf, n, off) : write(fd, buf, n);
	if (r < 0) {
		int e = errno;
		close(fd);
		printf("!%s@write\n", en(e));
		return;
	}
	if (close(fd) < 0) {
		printf("!%s@close(wrote %zd)\n", en(errno), r);
		return;
	}
	printf("OK %zd\n", r);
}

/* one line for a system call's result; the call is made before errno is read */
static void report(int rc, const char *step)
{
	if (rc < 0)
		printf("!%s@%s\n", en(errno), step);
	else
		printf("OK\n");
}

/* A stat result as one comma-separated field: type,mode,size,nNLINK,uid:gid */
static const char *sfmt(const struct stat *st)
{
	static char bufs[4][96];
	static int i;
	char *b = bufs[i++ & 3];
	snprintf(b, 96, "%s,%04o,%lld,n%lu,%u:%u", ftype(st->st_mode), (unsigned)(st->st_mode & 07777),
		 (long long)st->st_size, (unsigned long)st->st_nlink, st->st_uid, st->st_gid);
	return b;
}

/* " KEY=" and then the stat result of rc/st, or !ERRNO (errno read right after the call) */
static void pstat(const char *key, int rc, const struct stat *st)
{
	if (rc < 0)
		printf(" %s=!%s", key, en(errno));
	else
		printf(" %s=%s", key, sfmt(st));
}

/* write DATA to REL through a descriptor of its own; returns "OK" or "!ERRNO" */
static const char *poke(const char *rel, const char *data)
{
	static char r[40];
	int fd = open(full(rel), O_WRONLY);
	if (fd < 0 || write(fd, data, strlen(data)) < 0)
		snprintf(r, sizeof r, "!%s", en(errno));
	else
		snprintf(r, sizeof r, "OK");
	if (fd >= 0)
		close(fd);
	return r;
}

/* holdstat KIND TARGET REMOVE [CREATE UUID]: a descriptor held across the removal of its device.
 * KIND: file (O_RDONLY), wfile (O_WRONLY) or dir:CHILD (O_RDONLY|O_DIRECTORY; CHILD is looked up
 * through it). Opens TARGET and fstats it, writes "1" to REMOVE (and, with CREATE, UUID to CREATE:
 * the same device again), then asks the held descriptor: fstat, fstatat(fd, "", AT_EMPTY_PATH),
 * lstat of TARGET's name (and whether it names the same inode), for a directory fstatat of ".",
 * "..", CHILD and openat CHILD and a listing from offset 0 (getdents64), for a file a pread
 * from 0 (or a pwrite of "1" and ftruncate for wfile); then fchmod (0600, a directory 0700) and
 * fstat again; the mode is put back before close. One line: KEY=VALUE fields. */
static void holdstat(const char *kind, const char *target, const char *remove, const char *create,
		     const char *uuid)
{
	int dir = !strncmp(kind, "dir", 3), wr = !strcmp(kind, "wfile");
	const char *child = dir && kind[3] == ':' ? kind + 4 : "uevent";
	char tpath[PATH_MAX];
	snprintf(tpath, sizeof tpath, "%s", full(target));
	int fd = open(tpath, dir ? O_RDONLY | O_DIRECTORY : wr ? O_WRONLY : O_RDONLY);
	if (fd < 0) {
		printf("!%s@open\n", en(errno));
		return;
	}
	struct stat st0, st;
	if (fstat(fd, &st0) < 0) {
		printf("!%s@fstat\n", en(errno));
		close(fd);
		return;
	}
	printf("before=%s", sfmt(&st0));
	printf(" remove=%s", poke(remove, "1"));
	if (create && uuid)
		printf(" create=%s", poke(create, uuid));
	pstat("fstat", fstat(fd, &st), &st);
	pstat("at-empty", fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW), &st);
	if (lstat(tpath, &st) < 0)
		printf(" path=!%s", en(errno));
	else
		printf(" path=%s,%s", sfmt(&st), st.st_ino == st0.st_ino ? "same-inode" : "other-inode");
	static char buf[1 << 16];
	if (dir) {
		pstat("at-dot", fstatat(fd, ".", &st, AT_SYMLINK_NOFOLLOW), &st);
		pstat("at-dotdot", fstatat(fd, "..", &st, AT_SYMLINK_NOFOLLOW), &st);
		pstat("at-child", fstatat(fd, child, &st, AT_SYMLINK_NOFOLLOW), &st);
		int cf = openat(fd, child, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
		if (cf < 0 && errno == ELOOP)
			cf = openat(fd, child, O_RDONLY | O_NONBLOCK);
		printf(" openat-child=%s%s", cf < 0 ? "!" : "", cf < 0 ? en(errno) : "OK");
		if (cf >= 0)
			close(cf);
		if (lseek(fd, 0, SEEK_SET) < 0) {
			printf(" list=!%s@lseek", en(errno));
		} else {
			int cnt = 0, dots = 0;
			long r;
			while ((r = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0) {
				for (long off = 0; off < r;) {
					unsigned short reclen = *(unsigned short *)(buf + off + 16);
					const char *name = buf + off + 19;
					if (!strcmp(name, ".") || !strcmp(name, ".."))
						dots++;
					else
						cnt++;
					off += reclen;
				}
			}
			if (r < 0)
				printf(" list=!%s", en(errno));
			else
				printf(" list=OK:%d+%ddots", cnt, dots);
		}
	} else if (wr) {
		ssize_t r = pwrite(fd, "1", 1, 0);
		if (r < 0)
			printf(" write=!%s", en(errno));
		else
			printf(" write=OK:%zd", r);
		{
			int t = ftruncate(fd, 0);
			printf(" ftruncate=%s%s", t < 0 ? "!" : "", t < 0 ? en(errno) : "OK");
		}
	} else {
		ssize_t r = pread(fd, buf, sizeof buf, 0);
		if (r < 0)
			printf(" read=!%s", en(errno));
		else {
			printf(" read=OK:");
			pcontent(buf, r);
		}
	}
	int c = fchmod(fd, dir ? 0700 : 0600);
	printf(" fchmod=%s%s", c < 0 ? "!" : "", c < 0 ? en(errno) : "OK");
	pstat("fstat-after-fchmod", fstat(fd, &st), &st);
	fchmod(fd, st0.st_mode & 07777);
	c = close(fd);
	printf(" close=%s%s\n", c < 0 ? "!" : "", c < 0 ? en(errno) : "OK");
}

static int usage(void)
{
	fprintf(stderr, "usage: mdevop walk STATE REL... | stat REL | read REL | readchunks REL N |\n"
			"  pread REL OFF LEN | write REL DATA | pwrite REL OFF DATA | writerw REL DATA |\n"
			"  open REL rdonly|wronly|rdwr|creat|trunc | ls REL | realpath REL |\n"
			"  holdread FILE REMOVE | holdwrite REMOVE | holddir DIR REMOVE | rewind DIR CREATE UUID |\n"
			"  mkdir REL | rmdir REL | unlink REL | rename A B | symlink TARGET REL | chmod REL OCT |\n"
			"  holdstat file|wfile|dir[:CHILD] TARGET REMOVE [CREATE UUID]\n");
	return 2;
}

int main(int argc, char **argv)
{
	if (getenv("SYSROOT"))
		root = getenv("SYSROOT");
	if (!realpath(root, rootreal))
		snprintf(rootreal, sizeof rootreal, "%s", root);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 3)
		return usage();
	const char *cmd = argv[1];
	char buf[1 << 16];
	size_t n;
	const char *step;

	if (!strcmp(cmd, "walk")) {
		for (int i = 3; i < argc; i++)
			walk(argv[2], argv[i]);
	} else if (!strcmp(cmd, "stat")) {
		struct stat st;
		if (lstat(full(argv[2]), &st) < 0)
			printf("!%s@lstat\n", en(errno));
		else
			printf("OK %s %04o %lld\n", ftype(st.st_mode), (unsigned)(st.st_mode & 07777),
			       (long long)st.st_size);
	} else if (!strcmp(cmd, "read") || !strcmp(cmd, "readchunks")) {
		size_t chunk = argc > 3 ? strtoul(argv[3], NULL, 0) : 0;
		int r = readall(full(argv[2]), buf, sizeof buf, &n, &step, chunk);
		if (r < 0)
			printf("!%s@%s\n", en(-r), step);
		else {
			printf("OK ");
			pcontent(buf, n);
			printf("\n");
		}
	} else if (!strcmp(cmd, "pread") && argc > 4) {
		int fd = open(full(argv[2]), O_RDONLY);
		if (fd < 0) {
			printf("!%s@open\n", en(errno));
			return 0;
		}
		ssize_t r = pread(fd, buf, strtoul(argv[4], NULL, 0), strtoll(argv[3], NULL, 0));
		if (r < 0)
			printf("!%s@pread\n", en(errno));
		else {
			printf("OK ");
			pcontent(buf, r);
			printf("\n");
		}
		close(fd);
	} else if ((!strcmp(cmd, "write") || !strcmp(cmd, "writerw")) && argc > 3) {
		int fd = open(full(argv[2]), !strcmp(cmd, "write") ? O_WRONLY : O_RDWR);
		if (fd < 0) {
			printf("!%s@open\n", en(errno));
			return 0;
		}
		result_write(fd, argv[3], 0, 0);
	} else if (!strcmp(cmd, "pwrite") && argc > 4) {
		int fd = open(full(argv[2]), O_WRONLY);
		if (fd < 0) {
			printf("!%s@open\n", en(errno));
			return 0;
		}
		result_write(fd, argv[4], strtoll(argv[3], NULL, 0), 1);
	} else if (!strcmp(cmd, "open") && argc > 3) {
		int fl = O_RDONLY;
		if (!strcmp(argv[3], "wronly"))
			fl = O_WRONLY;
		else if (!strcmp(argv[3], "rdwr"))
			fl = O_RDWR;
		else if (!strcmp(argv[3], "creat"))
			fl = O_WRONLY | O_CREAT;
		else if (!strcmp(argv[3], "excl"))
			fl = O_WRONLY | O_CREAT | O_EXCL;
		else if (!strcmp(argv[3], "trunc"))
			fl = O_WRONLY | O_TRUNC;
		else if (!strcmp(argv[3], "dir"))
			fl = O_RDONLY | O_DIRECTORY;
		int fd = open(full(argv[2]), fl, 0644);
		if (fd < 0)
			printf("!%s@open\n", en(errno));
		else {
			printf("OK\n");
			close(fd);
		}
	} else if (!strcmp(cmd, "ls")) {
		int cnt, err;
		char **v = listdir(full(argv[2]), &cnt, &err);
		if (err)
			printf("!%s@readdir", en(err));
		else
			printf("OK");
		for (int i = 0; i < cnt; i++)
			printf(" %s", v[i]);
		printf("\n");
	} else if (!strcmp(cmd, "realpath")) {
		char r[PATH_MAX];
		if (!realpath(full(argv[2]), r))
			printf("!%s@realpath\n", en(errno));
		else {
			size_t l = strlen(rootreal);
			const char *rel = strncmp(r, rootreal, l) == 0 ? r + l : r;
			while (*rel == '/')
				rel++;
			printf("%s\n", rel);
		}
	} else if (!strcmp(cmd, "holdread") && argc > 3) {
		/* open FILE, remove the device through REMOVE, then read FILE's open fd again */
		int fd = open(full(argv[2]), O_RDONLY);
		if (fd < 0) {
			printf("!%s@open\n", en(errno));
			return 0;
		}
		ssize_t r0 = read(fd, buf, sizeof buf);
		printf("before=%s ", r0 < 0 ? en(errno) : "OK");
		int rf = open(full(argv[3]), O_WRONLY);
		if (rf < 0 || write(rf, "1", 1) < 0)
			printf("remove=!%s ", en(errno));
		else
			printf("remove=OK ");
		if (rf >= 0)
			close(rf);
		ssize_t r = pread(fd, buf, sizeof buf, 0);
		if (r < 0)
			printf("after=!%s@pread", en(errno));
		else {
			printf("after=OK ");
			pcontent(buf, r);
		}
		r = read(fd, buf, sizeof buf);
		if (r < 0)
			printf(" read-again=%s", en(errno));
		else
			printf(" read-again=OK(%zd bytes)", r);
		printf(" close=%s\n", close(fd) < 0 ? en(errno) : "OK");
	} else if (!strcmp(cmd, "holdwrite")) {
		/* open REMOVE twice; write "1" through the first, then through the second */
		int a = open(full(argv[2]), O_WRONLY), b = open(full(argv[2]), O_WRONLY);
		if (a < 0 || b < 0) {
			printf("!%s@open\n", en(errno));
			return 0;
		}
		ssize_t r = write(a, "1", 1);
		printf("first=%s ", r < 0 ? en(errno) : "OK");
		close(a);
		r = write(b, "1", 1);
		printf("second=%s", r < 0 ? en(errno) : "OK");
		printf(" close=%s\n", close(b) < 0 ? en(errno) : "OK");
	} else if (!strcmp(cmd, "holddir") && argc > 3) {
		/* opendir DIR, remove the device, then readdir the held stream */
		DIR *d = opendir(full(argv[2]));
		if (!d) {
			printf("!%s@opendir\n", en(errno));
			return 0;
		}
		int rf = open(full(argv[3]), O_WRONLY);
		if (rf < 0 || write(rf, "1", 1) < 0)
			printf("remove=!%s ", en(errno));
		else
			printf("remove=OK ");
		if (rf >= 0)
			close(rf);
		struct dirent *e;
		int cnt = 0;
		errno = 0;
		while ((e = readdir(d)))
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
				cnt++;
		printf("readdir=%s entries=%d\n", errno ? en(errno) : "OK", cnt);
		closedir(d);
	} else if (!strcmp(cmd, "rewind") && argc > 4) {
		/* opendir DIR and read it whole, write UUID to CREATE, rewinddir, read it again:
		 * a held directory stream that is rewound sees the change */
		DIR *d = opendir(full(argv[2]));
		if (!d) {
			printf("!%s@opendir\n", en(errno));
			return 0;
		}
		int before = 0, after = 0, dots = 0;
		struct dirent *e;
		while ((e = readdir(d)))
			before++;
		int cf = open(full(argv[3]), O_WRONLY);
		printf("create=%s ", cf >= 0 && write(cf, argv[4], strlen(argv[4])) >= 0 ? "OK" : en(errno));
		if (cf >= 0)
			close(cf);
		rewinddir(d);
		while ((e = readdir(d))) {
			after++;
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				dots++;
		}
		printf("before=%d after=%d dots=%d\n", before, after, dots);
		closedir(d);
	} else if (!strcmp(cmd, "holdstat") && argc > 4) {
		holdstat(argv[2], argv[3], argv[4], argc > 6 ? argv[5] : NULL, argc > 6 ? argv[6] : NULL);
	} else if (!strcmp(cmd, "mkdir")) {
		report(mkdir(full(argv[2]), 0755), "mkdir");
	} else if (!strcmp(cmd, "rmdir")) {
		report(rmdir(full(argv[2])), "rmdir");
	} else if (!strcmp(cmd, "unlink")) {
		report(unlink(full(argv[2])), "unlink");
	} else if (!strcmp(cmd, "rename") && argc > 3) {
		report(rename(full(argv[2]), full(argv[3])), "rename");
	} else if (!strcmp(cmd, "symlink") && argc > 3) {
		report(symlink(argv[2], full(argv[3])), "symlink");
	} else if (!strcmp(cmd, "chmod") && argc > 3) {
		report(chmod(full(argv[2]), strtoul(argv[3], NULL, 8)), "chmod");
	} else if (!strcmp(cmd, "truncate")) {
		report(truncate(full(argv[2]), 0), "truncate");
	} else
		return usage();
	return 0;
}
