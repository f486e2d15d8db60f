module example.com/mdevfstest

go 1.19
