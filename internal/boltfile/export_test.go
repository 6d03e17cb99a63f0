// SPDX-License-Identifier: Apache-2.0

package boltfile

// The file layout, for tests that damage files on purpose.
const (
	PageHeaderSize   = pageHeaderSize
	EntrySize        = entrySize
	BucketHeaderSize = bucketHeaderSize
	BucketEntry      = bucketEntry
	BranchPage       = branchPage
)

var Order = order
